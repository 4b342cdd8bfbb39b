"""``funnelpilot funnels --plan``: what compiling (and deploying) the funnel files would change for
the people inside each funnel, said before anything is written. It compares the compiler's output
with the last compiled state machines (infra/statemachines), or with a deployed stack's, whose
running executions it places in the state they are in (README "Changing a live funnel").

What Step Functions does decides every sentence: UpdateStateMachine leaves each running execution
on the definition it started with, so people inside finish on the old one (and, through the
content versions it names, with the old emails and texts); only new entrants meet added or changed states.
DeleteStateMachine stops the running executions at their next transition.
"""
import json
from collections import Counter
from pathlib import Path

from funnelpilot_local import compiler

STATE_MACHINE = "AWS::StepFunctions::StateMachine"


# ---------------------------------------------------------------- a deployed stack
def stack_machines(stack: str, region: str) -> dict[str, str]:
    """Logical id -> state machine ARN of the stack's state machines (ListStackResources: it pages,
    where DescribeStackResources stops at 100 resources)."""
    import boto3

    pages = boto3.client("cloudformation", region_name=region).get_paginator("list_stack_resources")
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for page in pages.paginate(StackName=stack)
            for r in page["StackResourceSummaries"] if r["ResourceType"] == STATE_MACHINE}


def machine_state(sfn, arns: dict[str, str]) -> dict[str, dict]:
    """funnel -> {"definition": the deployed one, "inside": state -> running executions there,
    "versions": the content versions the deployed definition and those the running executions run
    on send}, for the funnels' machines among ``arns`` (logical id -> ARN). Per running execution one
    GetExecutionHistory (newest events first, up to the state it last entered) and one
    DescribeStateMachineForExecution (the definition it started on)."""
    out = {}
    for lid, arn in arns.items():
        if not lid.endswith("Funnel"):
            continue
        definition = json.loads(sfn.describe_state_machine(stateMachineArn=arn)["definition"])
        if compiler.MARKER not in definition.get("Comment", ""):
            continue
        fid = definition.get("Comment", "").split(":", 1)[0]
        inside: Counter = Counter()
        versions = compiler.referenced_versions(definition)
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn, statusFilter="RUNNING"):
            for execution in page["executions"]:
                inside[_current_state(sfn, execution["executionArn"])] += 1
                started_on = sfn.describe_state_machine_for_execution(executionArn=execution["executionArn"])
                versions |= compiler.referenced_versions(json.loads(started_on["definition"]))
        out[fid] = {"arn": arn, "definition": definition, "inside": inside, "versions": versions}
    return out


def _current_state(sfn, execution_arn: str) -> str:
    token = None
    while True:
        page = sfn.get_execution_history(executionArn=execution_arn, reverseOrder=True, maxResults=20,
                                         **({"nextToken": token} if token else {}))
        for event in page["events"]:
            if "stateEnteredEventDetails" in event:
                return event["stateEnteredEventDetails"]["name"]
        token = page.get("nextToken")
        if not token:
            return "(starting)"


def needed(deployed: dict[str, dict]) -> set[str]:
    """``<folder>/<template>@<version>`` a deployed stack may still send (machine_state)."""
    return {v for s in deployed.values() for v in s["versions"]}


def running(deployed: dict[str, dict] | None) -> dict[str, int] | None:
    """Journeys running per funnel on the deployed stack (None: not asked)."""
    return None if deployed is None else {fid: sum(s["inside"].values()) for fid, s in deployed.items()}


# ---------------------------------------------------------------- the plan
def report(root: Path, expected: dict[Path, str], draining: dict[str, str], deployed: dict[str, dict] | None = None
           ) -> str:
    """Per funnel, what happens to the people inside when ``expected`` (compiler.build) is deployed:
    against ``deployed`` (machine_state) when given, else against the compiled files on disk;
    ``draining``: funnel -> why it drains (compiler.draining)."""
    machines, lines = root / "infra" / "statemachines", []
    new = {p.name.removesuffix(".asl.json"): _plain(json.loads(text)) for p, text in expected.items()
           if p.parent == machines and p.name.endswith(".asl.json")}
    if deployed is not None:
        old = {fid: _plain(s["definition"]) for fid, s in deployed.items()}
    else:
        old = {p.name.removesuffix(".asl.json"): _plain(json.loads(p.read_text())) for p in machines.glob("*.asl.json")
               if compiler.MARKER in p.read_text()}
    for fid in sorted(set(old) | set(new)):
        inside = (deployed or {}).get(fid, {}).get("inside", Counter())
        said = _funnel(fid, old.get(fid), new.get(fid), inside, deployed is not None, draining.get(fid))
        lines.append(f"{fid}: " + (said[0] if said else "no change"))
        lines += [f"  - {line}" for line in said[1:]]
        if inside:
            lines.append("  now: " + ", ".join(f"{n} in '{state}'" for state, n in sorted(inside.items())))
    lines.append("(nothing written: `make funnels` compiles, a deploy applies it)")
    return "\n".join(lines)


def _plain(definition: dict) -> dict:
    """A definition without what a deploy substitutes (the Tasks' function ARN), to compare with."""
    states = {}
    for name, state in definition["States"].items():
        state = {k: v for k, v in state.items() if k != "Resource"}
        if isinstance(state.get("Parameters"), dict) and "FunctionName" in state["Parameters"]:
            state["Parameters"] = {k: v for k, v in state["Parameters"].items() if k != "FunctionName"}
        states[name] = state
    return {**definition, "States": states}


def _funnel(fid: str, old: dict | None, new: dict | None, inside: Counter, counted: bool,
            draining: str | None) -> list[str]:
    """The sentences for one funnel: a headline, then one per change."""
    total = sum(inside.values())
    people = f"{total} journeys" if counted else "the journeys"
    if old is None:
        return ["new funnel: people enter from its next trigger or hand-off"]
    if new is None:
        return [f"removed (--force{' or nobody inside' if counted and not total else ''}): the deploy deletes its state "
                f"machine; {people} still inside stop at their next transition (DeleteStateMachine)"]
    said = [] if old == new else _changes(old, new, inside, counted)
    if draining:
        head = f"draining ({draining}): takes nobody in; {people} inside finish on the definition they started on"
        if draining.startswith("its file"):
            head += f"; `funnelpilot funnels --force {fid}` removes it now"
        return [head] + said
    if said:
        who = f"the {total} running now" if counted else "people inside"
        return [f"changes ({who} keep the definition they started on; only new entrants get the new one)"] + said
    return []


def _changes(old: dict, new: dict, inside: Counter, counted: bool) -> list[str]:
    olds, news = old["States"], new["States"]
    gone, added = [n for n in olds if n not in news], [n for n in news if n not in olds]
    pairs = _pairs(old, new, gone, added)
    said = []

    def there(name: str) -> str:
        n = inside.get(name, 0)
        return f"{n} there now" if counted else "anyone there now"

    for a, b in pairs.items():
        kind = olds[a]["Type"]
        if _template(olds[a]):
            said.append(f"{_noun(olds[a])} {_template(olds[a])} is replaced by {_template(news[b])} ('{a}' -> '{b}'): people "
                        f"inside who reach it still get {_template(olds[a])} as it was ({there(a)})")
        elif kind == "Wait":
            said.append(f"wait '{a}' becomes '{b}': people waiting there keep the old wait ({there(a)}); new entrants "
                        f"wait {_wait(news[b])}")
        else:
            said.append(f"'{a}' becomes '{b}': people inside keep '{a}' ({there(a)}); only new entrants meet '{b}'")
    paired_old, paired_new = set(pairs), set(pairs.values())
    for name in gone:
        if name not in paired_old:
            said.append(f"state '{name}' disappears: people there finish on the old definition ({there(name)})")
    for name in added:
        if name not in paired_new:
            said.append(f"state '{name}' is added: only new entrants reach it")
    for name in (n for n in olds if n in news and _renamed(olds[n], pairs) != news[n]):
        a, b = olds[name], news[name]
        if _template(a) and (a["Parameters"].get("version"), _template(a)) != (b["Parameters"].get("version"),
                                                                                 _template(b)):
            said.append(f"{_noun(a)} {_template(a)} is edited (version {a['Parameters'].get('version')} -> "
                        f"{b['Parameters'].get('version')}): people inside get the old text at '{name}'; new "
                        "entrants the new one")
        elif a["Type"] == "Wait" and _wait(a) != _wait(b):
            said.append(f"wait '{name}' changes from {_wait(a)} to {_wait(b)}: only new entrants wait the new time "
                        f"({there(name)} keep the old)")
        elif not _template(a):
            said.append(f"state '{name}' changes: only new entrants get the change")
    return said


def _template(state: dict) -> str | None:
    """The template a send (an email's or a text's) sends."""
    params = compiler.payload(state)
    return params.get("template") if params.get("action") in compiler.CHANNELS else None


def _noun(state: dict) -> str:
    return "text" if compiler.payload(state)["action"] == "sms" else "email"


def _wait(state: dict) -> str:
    if "Seconds" in state:
        return compiler._human(state["Seconds"])
    return "a computed time"


def _pairs(old: dict, new: dict, gone: list[str], added: list[str]) -> dict[str, str]:
    """State gone -> state added that takes its place: same type, entered from the same state or
    leading to the same one (a renamed email, a changed wait), where states already paired count
    as the same; repeated until nothing more pairs."""
    before, after, pairs = _predecessors(old), _predecessors(new), {}
    found = True
    while found:
        found = False
        for a in (a for a in gone if a not in pairs):
            into = {pairs.get(p, p) for p in before.get(a, ())}
            nxt = pairs.get(old["States"][a].get("Next"), old["States"][a].get("Next"))
            for b in (b for b in added if b not in pairs.values()):
                if old["States"][a]["Type"] == new["States"][b]["Type"] and (
                        into & after.get(b, set()) or (nxt and nxt == new["States"][b].get("Next"))):
                    pairs[a], found = b, True
                    break
    return pairs


def _renamed(state: dict, pairs: dict[str, str]) -> dict:
    """The state with its targets named as in the new definition."""
    state = dict(state)
    for key in ("Next", "Default"):
        if key in state:
            state[key] = pairs.get(state[key], state[key])
    for key in ("Choices", "Catch"):
        if key in state:
            state[key] = [{**c, "Next": pairs.get(c["Next"], c["Next"])} for c in state[key]]
    return state


def _predecessors(definition: dict) -> dict[str, set[str]]:
    into: dict[str, set[str]] = {}
    for name, state in definition["States"].items():
        for target in compiler._targets(state, catches=False):
            into.setdefault(target, set()).add(name)
    return into

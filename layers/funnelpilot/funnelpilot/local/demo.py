"""``make demo``: the whole machine at work in seconds on the local runtime."""
import json
import random
import time

from funnelpilot.local.runtime import Runtime

FIRST_NAMES = ["Ada", "Ben", "Chloé", "Dev", "Eun-ji", "Femi", "Gus", "Hana", "Ivan", "Jo"]


def run(seed: int = 7, contacts: int = 8, speed: float = 86_400.0) -> int:
    rng = random.Random(seed)
    started = time.monotonic()
    with Runtime(speed=speed) as rt:
        for old in rt.outbox.glob("*.eml"):
            old.unlink()
        print(f"funnelpilot demo - local runtime from template.yaml (seed {seed}, 1 day = {86400 / speed:g} s)")
        people = [(f"reader{i}@example.com", FIRST_NAMES[i % len(FIRST_NAMES)]) for i in range(contacts)]
        statuses = []
        for email, name in people:
            form = {"email": email, "first_name": name, "consent": "true",
                    "utm_source": rng.choice(["newsletter", "ads", "partner"])}
            statuses.append(rt.http("POST", "/signup", form=form).status)
        again = rt.http("POST", "/signup", form={"email": people[0][0], "consent": "true"}).status
        print(f"signups: {len(people)} via POST /signup -> {sorted(set(statuses))}; "
              f"{people[0][0].split('@')[0]}@… signed up again -> {again}")
        if not rt.settle(timeout=120):
            print("warning: executions still running after 120 s")
        sfn = rt.client("stepfunctions")
        for arn in rt.state_machine_arns():
            executions = sfn.list_executions(stateMachineArn=arn)["executions"]
            print(f"\nfunnel {arn.rsplit(':', 1)[-1]}: {len(executions)} executions")
            for ex in sorted(executions, key=lambda e: e["name"]):
                history = sfn.get_execution_history(executionArn=ex["executionArn"])["events"]
                states = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
                print(f"  {ex['name']:<32} {ex['status']:<10} {' → '.join(states)}")
        emails = sorted(rt.outbox.glob("*.eml"))
        print(f"\noutbox: {len(emails)} emails in {rt.outbox}/")
        for path in emails[:5]:
            head = path.read_text(errors="replace").split("\n\n", 1)[0]
            subject = next((line[9:] for line in head.splitlines() if line.startswith("Subject: ")), "")
            print(f"  {path.name}  {subject}")
        if rt.errors:
            print("errors:", json.dumps(rt.errors, indent=2))
            return 1
    print(f"\ndone in {time.monotonic() - started:.1f} s")
    return 0

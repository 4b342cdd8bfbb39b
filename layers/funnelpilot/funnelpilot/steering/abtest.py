"""A/B splits: which arm is ahead, how sure we are, and an optional automatic winner.

An arm's figures are the sums of the counters of its Send states (the compiler lists them as
the split Task's ``arms``): human clicks per email delivered (sent - bounced), or conversions
per contact who entered the arm. Significance is the two-sided p-value of the pooled
two-proportion z-test between the leading arm and the runner-up (pure Python).

A split with ``winner: {min_sends: 100, metric: clicks, p: 0.05}`` declares its winner once every
arm has ``min_sends`` sends and p < ``p``: the item ``WINNER#<split state>`` under the funnel in
the metrics table (a conditional put: declared once), which the split step reads (one GetItem)
so that new entrants all get the winner; contacts already past the split keep their arm. The
judgement runs in the metrics function when it counts what the metric counts (a unique human
click on an arm's email, or a conversion on one of its steps), one Query of the funnel's counters,
never on a send; it stops once the winner is declared.
"""
import json
from functools import cache
from math import erfc, sqrt
from pathlib import Path

from funnelpilot import aws, clock
from funnelpilot.config import config

WINNER = "WINNER#"


def p_value(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> float | None:
    """Two-sided p of the pooled two-proportion z-test; None without trials or variation on one side."""
    if trials_a <= 0 or trials_b <= 0:
        return None
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    if pooled <= 0 or pooled >= 1:
        return None
    z = (successes_a / trials_a - successes_b / trials_b) / sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    return erfc(abs(z) / sqrt(2))


@cache
def _definition(path: str) -> dict:
    return json.loads(Path(path).read_text())


def splits(funnel: str, content_dir: Path | None = None) -> list[dict]:
    """The funnel's splits from its state machine: ``state``, ``arms`` (variant -> Send states), ``winner``."""
    path = Path(content_dir or config().content_dir) / "statemachines" / f"{funnel}.asl.json"
    if not path.exists():
        return []
    out = []
    for name, state in _definition(str(path))["States"].items():
        params = state.get("Parameters") or {}
        if params.get("action") == "split" and params.get("arms"):
            out.append({"state": name, "arms": params["arms"], "winner": params.get("winner")})
    return out


def compare(split: dict, steps: dict[str, dict], metric: str = "clicks") -> dict:
    """The split's arms from the summed counters of each step (state -> counters): per arm
    ``sent``, ``trials``, ``successes``, ``rate``; the ``leader``, the ``runner_up`` and ``p``."""
    arms = {}
    for variant, states in split["arms"].items():
        got = {k: sum(steps.get(s, {}).get(k, 0) for s in states)
               for k in ("sent", "bounced", "blocked", "human_clicks", "conversions")}
        trials, successes = ((got["sent"] - got["bounced"], got["human_clicks"]) if metric == "clicks"
                             else (got["sent"] + got["blocked"], got["conversions"]))
        arms[variant] = {"sent": got["sent"], "trials": trials, "successes": successes,
                         "rate": round(100.0 * successes / trials, 1) if trials else None}
    ranked = sorted(arms, key=lambda v: (-(arms[v]["successes"] / arms[v]["trials"]) if arms[v]["trials"] else 1, v))
    leader, runner_up = ranked[0], ranked[1]
    p = p_value(arms[leader]["successes"], arms[leader]["trials"], arms[runner_up]["successes"],
                arms[runner_up]["trials"])
    return {"state": split["state"], "metric": metric, "arms": arms, "leader": leader, "runner_up": runner_up,
            "p": None if p is None else round(p, 4)}


def winner_key(funnel: str, state: str) -> dict:
    return {"pk": {"S": f"FUNNEL#{funnel}"}, "sk": {"S": f"{WINNER}{state}"}}


def current_winner(funnel: str, state: str) -> str | None:
    """The variant declared the winner of a split (one GetItem), or None."""
    item = aws.dynamodb().get_item(TableName=config().metrics_table, Key=winner_key(funnel, state)).get("Item")
    return item["variant"]["S"] if item else None


def _step_sums(funnel: str) -> dict[str, dict]:
    from funnelpilot import report  # (report shows these figures: it imports this module)

    sums: dict[str, dict] = {}
    for row in report.query_rows(funnel, "0000-00-00", "9999-12-31", winners=False):
        _, _, name = row["sk"].removeprefix("DAY#").partition("#")
        if name.startswith("STEP#"):
            counts = sums.setdefault(name.removeprefix("STEP#"), {})
            for key, value in row.items():
                if isinstance(value, int):
                    counts[key] = counts.get(key, 0) + value
    return sums


def judge(funnel: str, split: dict) -> str | None:
    """Declare the split's winner if it has one now; returns the winner (declared now or before)."""
    rule = split["winner"]
    if declared := current_winner(funnel, split["state"]):
        return declared
    result = compare(split, _step_sums(funnel), rule["metric"])
    if min(a["sent"] for a in result["arms"].values()) < rule["min_sends"] or result["p"] is None \
            or result["p"] >= rule["p"]:
        return None
    item = {**winner_key(funnel, split["state"]), "variant": {"S": result["leader"]},
            "declared_at": {"S": clock.iso()}, "p": {"S": str(result["p"])}, "metric": {"S": rule["metric"]},
            "arms": {"S": json.dumps(result["arms"])}}
    aws.conditional("put_item", TableName=config().metrics_table, Item=item, ConditionExpression="attribute_not_exists(pk)")
    return current_winner(funnel, split["state"])


def on_counted(detail_type: str, detail: dict) -> None:
    """After an event was counted (a click by the metrics function, a conversion by the router): judge
    the splits with a winner rule whose metric it counts (a unique human click on an arm's email, a
    conversion on an arm's step)."""
    funnel, step = detail.get("funnel"), detail.get("step")
    clicked = detail_type == "email.clicked" and detail.get("human") is True and detail.get("unique")
    if not funnel or not step or not (clicked or detail_type == "funnel.converted"):
        return
    for split in splits(funnel):
        rule = split["winner"]
        if rule and rule["metric"] == ("clicks" if clicked else "conversions") and \
                any(step in states for states in split["arms"].values()):
            judge(funnel, split)

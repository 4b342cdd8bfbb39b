"""Revenue attribution: an ``order.placed`` is credited to the funnel, step and email of the
person's last human click within ``attribution.window_days`` (infra/steering.yaml) before it.

At the order, one Query reads the contact's message items (``pk = contact``, ``MSG#``; only
those hit in the window come back) and takes the latest hit labelled human (a hit re-labelled
machine later - a scanner's burst, the honeypot - no longer counts). The amount is added with
one UpdateItem to that step's counters of the order's day (``revenue_cents_<currency>``,
``attributed_orders``; the step item names its template and variant, so emails and A/B arms get
their revenue too), after the counted-once marker on the order's event id. An order with no
such click is added to the ``_unattributed`` funnel row instead, so the report can say what
share of the revenue the emails brought. Nothing is written on the path of an email or a click.
"""
import re
from datetime import datetime

from funnelpilot import aws, clock, engagement, metrics, steering, tokens
from funnelpilot.config import config

UNATTRIBUTED = "_unattributed"  # the metrics "funnel" of orders no human click led to
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def last_human_click(cid: str, at: float, window: float) -> dict | None:
    """The message (funnel, step, template, variant; or broadcast) of the contact's latest human click in
    ``[at - window, at]``, with its time (``clicked_at``); None when there is none."""
    since = clock.iso(at - window)  # the hits' and last_hit_at's own format: ISO strings compare in time order
    query = {"TableName": config().table, "KeyConditionExpression": "pk = :c AND begins_with(sk, :m)",
             "FilterExpression": "#l >= :since AND (attribute_exists(#f) OR attribute_exists(#b))",
             "ProjectionExpression": "#f, #s, #t, #v, #h, #b, #d, #sa",  # (names: some are DynamoDB reserved words)
             "ExpressionAttributeNames": {"#l": "last_hit_at", "#f": "funnel", "#s": "step", "#t": "template",
                                          "#v": "variant", "#h": "hits", "#b": "broadcast", "#d": "delivered_at",
                                          "#sa": "sent_at"},
             "ExpressionAttributeValues": {":c": {"S": cid}, ":m": {"S": "MSG#"}, ":since": {"S": since}}}
    best = None
    while True:
        page = aws.dynamodb().query(**query)
        for item in page["Items"]:
            for h in engagement.message_verdicts(item):  # the message's history decides, as for the click's event
                if h["kind"] != "click" or not h["human"]:
                    continue
                t = _epoch(h["at"])
                if at - window <= t <= at and (best is None or t > best["clicked_at"]):
                    best = {k: item[k]["S"] for k in ("funnel", "step", "template", "variant", "broadcast")
                            if "S" in item.get(k, {})}
                    best["clicked_at"] = t
        if "LastEvaluatedKey" not in page:
            return best
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def record(detail: dict) -> bool:
    """Credit one order (an ``order.placed`` detail); False for a duplicate or an order without amount."""
    amount, currency = detail.get("amount"), str(detail.get("currency") or "")
    if amount is None or not _CURRENCY.match(currency):
        return False
    at = _epoch(detail["occurred_at"])
    click = last_human_click(detail["contact_id"], at, steering.settings()["attribution_window_days"] * 86_400)
    cents = {f"revenue_cents_{currency.lower()}": round(float(amount) * 100)}
    # the marker is named by a digest: an order's event id holds the contact id (ingest), which an erasure removes
    once, day = f"revenue#{tokens.digest_id('rv', detail['event_id'])}", detail["occurred_at"][:10]
    if click is None:
        return metrics.count(UNATTRIBUTED, None, {**cents, "orders": 1}, once_key=once, day=day)
    if click.get("broadcast"):  # a broadcast email's click: the broadcast's report
        from funnelpilot.broadcasts import counters

        return counters.count_once(click["broadcast"], click.get("variant"), {**cents, "attributed_orders": 1}, once)
    return metrics.count(click["funnel"], click["step"], {**cents, "attributed_orders": 1}, once_key=once, day=day,
                         template=click.get("template"), variant=click.get("variant"))


def revenue(counts: dict) -> dict[str, float]:
    """currency -> amount, from counters named ``revenue_cents_<currency>``."""
    return {k.removeprefix("revenue_cents_").upper(): v / 100 for k, v in sorted(counts.items())
            if k.startswith("revenue_cents_") and v}


def fmt(amounts: dict[str, float]) -> str:
    return " + ".join(f"{v:,.2f} {c}" for c, v in amounts.items()) or "-"


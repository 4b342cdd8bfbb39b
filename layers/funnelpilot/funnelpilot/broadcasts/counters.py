"""A broadcast's counters and report: one item per broadcast in MetricsTable, ``pk = BROADCAST#<id>,
sk = COUNTS``, with a number per counter (``<name>@<variant>``: the same for an A/B variant).

- The send worker adds a chunk's outcome in ONE UpdateItem: ``processed`` (entries handled for good),
  ``audience`` (recipients seen for the first time), ``sent``, ``blocked`` and ``blocked_<reason>``,
  ``deferred`` (frequency cap: sent later), ``skipped`` and ``skipped_<reason>``; the launcher adds
  ``enqueued`` (entries sent to the queue) and the wave names: ``waves`` (planned) and ``done_waves``
  (all their entries enqueued). The broadcast is ``sent`` once every wave is done and everything
  enqueued was processed (``finish``).
- Engagement of a broadcast's messages (their events carry ``broadcast``: funnelpilot.metrics.record
  hands them here) is counted once per event as for funnel emails (``metrics.counters_for``: a human
  open once per message...), with a counted-once marker item first; orders credited to a broadcast
  email's click (funnelpilot.steering.attribution) add ``attributed_orders`` and ``revenue_cents_<cur>``.
"""
from funnelpilot import aws, clock
from funnelpilot.config import config

ENGAGEMENT = ("email.delivered", "email.opened", "email.clicked", "email.bounced", "email.complained",
              "contact.unsubscribed", "contact.list_unsubscribed")
MARKER_TTL = 14 * 86400
FIELDS = {"sent": "sent", "deferred": "deferred", "delivered": "delivered", "opens_human": "human_opens",
          "clicks_human": "human_clicks", "machine_opens": "machine_opens", "machine_clicks": "machine_clicks",
          "unsubscribes": "unsubscribes", "conversions": "attributed_orders", "bounces": "bounced",
          "complaints": "complained"}


def key(bid: str) -> dict:
    return {"pk": {"S": f"BROADCAST#{bid}"}, "sk": {"S": "COUNTS"}}


def _plain(item: dict) -> dict:
    out = {}
    for name, value in item.items():
        if "N" in value:
            out[name] = int(value["N"])
        elif "SS" in value:
            out[name] = set(value["SS"])
    return out


def add(bid: str, numbers: dict[str, int], *, waves=(), done=()) -> dict:
    """ADD ``numbers`` (zeros left out) and the wave names to the broadcast's counters in one UpdateItem;
    the counters after it."""
    numbers = {k: v for k, v in numbers.items() if v}
    names, values, parts = {}, {}, []
    for i, (name, amount) in enumerate(numbers.items()):
        names[f"#n{i}"], values[f":n{i}"] = name, {"N": str(amount)}
        parts.append(f"#n{i} :n{i}")
    for attribute, wave_names in (("waves", waves), ("done_waves", done)):
        if wave_names:
            names[f"#{attribute}"], values[f":{attribute}"] = attribute, {"SS": sorted(set(wave_names))}
            parts.append(f"#{attribute} :{attribute}")
    if not parts:
        return counters(bid)
    return _plain(aws.write("update_item", TableName=config().metrics_table, Key=key(bid),
                            UpdateExpression="ADD " + ", ".join(parts), ExpressionAttributeNames=names,
                            ExpressionAttributeValues=values, ReturnValues="ALL_NEW")["Attributes"])


def counters(bid: str) -> dict:
    item = aws.dynamodb().get_item(TableName=config().metrics_table, Key=key(bid), ConsistentRead=True).get("Item")
    return _plain(item or {})


def done(counts: dict) -> bool:
    """Every planned wave enqueued, and every entry enqueued handled."""
    planned = counts.get("waves") or set()
    return bool(planned) and planned <= (counts.get("done_waves") or set()) and \
        counts.get("processed", 0) >= counts.get("enqueued", 0)


def finish(bid: str, counts: dict) -> bool:
    """Mark the broadcast ``sent`` when its counters say it is done (once: a conditional status change)."""
    from funnelpilot.broadcasts import store

    return done(counts) and store.transition(bid, store.SENT, (store.SENDING,), finished_at=clock.iso())


def _with_variant(amounts: dict[str, int], variant: str | None) -> dict[str, int]:
    return {**amounts, **({f"{k}@{variant}": v for k, v in amounts.items()} if variant else {})}


def count_once(bid: str, variant: str | None, amounts: dict[str, int], once_key: str) -> bool:
    """Add ``amounts`` (and to ``variant``'s) at most once for ``once_key``: a marker item (conditional
    put, with TTL), then the ADD; the marker is deleted again when the ADD fails (the event's retry counts)."""
    table = config().metrics_table
    marker = {"pk": {"S": f"SEEN#b#{bid}#{once_key}"}, "sk": {"S": "SEEN"}}
    if not aws.conditional("put_item", TableName=table, Item={**marker, "expires_at": {
            "N": str(int(clock.now()) + MARKER_TTL)}}, ConditionExpression="attribute_not_exists(pk)"):
        return False
    try:
        add(bid, _with_variant(amounts, variant))
    except Exception:
        aws.write("delete_item", TableName=table, Key=marker)
        raise
    return True


def record(detail_type: str, detail: dict, guarded: bool = False) -> bool:
    """Count one engagement event of a broadcast's message (``detail["broadcast"]``); sends and
    blocks are the worker's own counts. False for a duplicate or an event that counts nothing here.
    ``guarded`` (funnelpilot.metrics.record): the caller's own write made it happen once, no marker."""
    from funnelpilot import metrics

    found = metrics.counters_for(detail_type, detail) if detail_type in ENGAGEMENT else None
    if found is None:
        return False
    amounts, once_key = found
    if guarded:
        add(detail["broadcast"], _with_variant(amounts, detail.get("variant")))
        return True
    return count_once(detail["broadcast"], detail.get("variant"), amounts, once_key)


def by_variant(counts: dict) -> dict[str | None, dict[str, int]]:
    """Counter names split at ``@``: variant (None: the whole broadcast) -> name -> number."""
    out: dict = {None: {}}
    for name, value in counts.items():
        if isinstance(value, int):
            base, _, variant = name.partition("@")
            out.setdefault(variant or None, {})[base] = value
    return out


def _figures(c: dict[str, int]) -> dict:
    def by(prefix: str) -> dict:
        return {k.removeprefix(prefix): n for k, n in sorted(c.items()) if k.startswith(prefix) and n}

    skipped = by("skipped_")
    return {"audience": c.get("audience", 0), **{k: c.get(v, 0) for k, v in FIELDS.items()},
            "blocked": by("blocked_"), "skipped": sum(skipped.values()), "skipped_reasons": skipped,
            "revenue": {currency.upper(): cents / 100 for currency, cents in by("revenue_cents_").items()}}


def report(bid: str, state: dict, variants: list[str]) -> dict:
    """The report's figures (README "Broadcasts"): the broadcast's and each A/B variant's."""
    counts = by_variant(counters(bid))
    total = counts[None]
    out = {"id": bid, "status": state["status"], **_figures(total), "enqueued": total.get("enqueued", 0),
           "processed": total.get("processed", 0)}
    if variants:
        out["winner"], out["decision"] = state.get("winner"), state.get("decision")
        out["variants"] = {v: _figures(counts.get(v, {})) for v in variants}
    return out

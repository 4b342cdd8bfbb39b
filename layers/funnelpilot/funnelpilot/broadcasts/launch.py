"""The launcher (functions/broadcast, on ``broadcast.due``): a broadcast's audience into SendQueue, as
chunks of at most ``CHUNK`` contact ids, paced at the send rate.

``broadcast.due`` ``{broadcast_id, wave, cursor?}`` (published at once for ``now``, else by a Scheduler
one-time schedule that puts it on the bus) names a wave:
- ``main``: the first pass, the only one that reads the audience - each segment's members (a Query of
  gsi1 ``SEG#<segment>``, a page at a time; a list is its segment ``list:<name>``). Its entries go to
  the queue now, or become chunk items of a later wave (``WAVE#<wave>#<chunk>``): an A/B test's rest
  (wave ``ab``, scheduled ``wait_hours`` after the sample's last chunk is due), a zone whose local time
  comes later (wave ``w<epoch>``, one schedule per instant, in that zone's ``ScheduleExpressionTimezone``).
- ``ab`` and ``w<epoch>``: enqueue that wave's chunk items (``ab`` first picks the winner).
- ``plan`` (from ``schedule``: creates the main wave's schedule), ``resume`` (sends what a pause held),
  ``cancel`` (deletes the pending schedules).

Pacing: chunk k of a pass becomes visible ``k * CHUNK / rate`` seconds after the pass began
(``DelaySeconds``), so workers find work at the rate SES takes it instead of contending for slots; a
pass stops once the queue holds ``WINDOW`` seconds of sending and continues ``CONTINUE`` seconds later
(a control message in the queue, which the worker turns back into ``broadcast.due``), or at once when the
invocation's time runs out. A re-run from a cursor makes the same chunks (ids from the broadcast, the
wave and the chunk's first contact): a duplicate entry only costs the worker a failed claim. Nobody
gets two emails: the message id is ``digest("bm", broadcast, contact)`` (a contact in two segments too).
"""
import hashlib
import json
import math
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from funnelpilot import aws, bus, clock, segments, tokens
from funnelpilot.broadcasts import counters, spec as specs, store
from funnelpilot.config import config
from funnelpilot.errors import TransientError
from funnelpilot.models import PROFILE, Contact

CHUNK = 50  # contact ids per queue message (one BatchGetItem of the profiles, one counter update)
PAGE = 1000  # members read per Query
WINDOW = 840  # seconds of sending the queue holds ahead (SQS DelaySeconds is at most 900)
CONTINUE = 600  # a pass that filled the window goes on this much later
SAFETY = 30.0  # seconds of an invocation kept for the page in hand and the hand-off (at most half of it)
EARLIEST = "Pacific/Kiritimati"  # UTC+14: the first zone to reach a local time (a local send's main wave)
CHUNK_TTL = 30 * 86400  # a wave's chunk items expire after this
MAIN, AB = "main", "ab"


def message_id(bid: str, cid: str) -> str:
    return tokens.digest_id("bm", bid, cid)


def due(bid: str, wave: str, **fields) -> dict:
    """The ``broadcast.due`` entry of a wave (a cursor: its continuation)."""
    return bus.event("broadcast.due", "", event_id=tokens.digest_id("bd", bid, wave, json.dumps(fields, sort_keys=True)),
                     broadcast_id=bid, wave=wave, **fields)


def again(detail: dict) -> dict:
    """The ``broadcast.due`` entry of a held or handed-off detail."""
    return due(detail["broadcast_id"], detail["wave"], **{k: detail[k] for k in ("cursor", "plan") if k in detail})


def schedule_name(bid: str, wave: str) -> str:
    """At most 64 characters: the id's start, a digest of the whole id, the wave."""
    return f"{bid[:30]}-{hashlib.sha256(bid.encode()).hexdigest()[:6]}-{wave}"


def _schedule(bid: str, wave: str, local: str, zone: str, **fields) -> str:
    """A one-time Scheduler schedule putting the wave's ``broadcast.due`` on the bus at ``local``
    (``YYYY-MM-DDTHH:MM:SS``) in ``zone``; deleted after it ran. Idempotent (an existing one is kept)."""
    name = schedule_name(bid, wave)
    detail = json.loads(due(bid, wave, **fields)["Detail"])
    scheduler = aws.client("scheduler")
    try:
        scheduler.create_schedule(
            Name=name, GroupName=config().broadcast_schedule_group, ScheduleExpression=f"at({local})",
            ScheduleExpressionTimezone=zone, FlexibleTimeWindow={"Mode": "OFF"}, ActionAfterCompletion="DELETE",
            State="ENABLED", Target={"Arn": config().bus_arn, "RoleArn": config().scheduler_role_arn,
                                     "Input": json.dumps(detail),
                                     "EventBridgeParameters": {"DetailType": "broadcast.due", "Source": bus.SOURCE}})
    except scheduler.exceptions.ConflictException:
        pass
    return name


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def unschedule(names) -> None:
    scheduler = aws.client("scheduler")
    for name in names:
        try:
            scheduler.delete_schedule(Name=name, GroupName=config().broadcast_schedule_group)
        except scheduler.exceptions.ResourceNotFoundException:
            pass  # it ran (and deleted itself), or a repeat of this call deleted it


# ---------------------------------------------------------------- the queue
def send_chunks(bodies: list[tuple[dict, int]]) -> None:
    """SendMessageBatch (10 a call) of (chunk body, DelaySeconds); failed entries are sent again."""
    sqs = aws.client("sqs")
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": json.dumps(body, separators=(",", ":")),
                    "DelaySeconds": max(0, min(900, int(delay)))} for n, (body, delay) in enumerate(bodies[i:i + 10])]
        for _attempt in range(5):
            failed = {f["Id"] for f in sqs.send_message_batch(QueueUrl=config().send_queue_url,
                                                              Entries=entries).get("Failed", [])}
            entries = [e for e in entries if e["Id"] in failed]
            if not entries:
                break
        else:
            raise TransientError(f"SendMessageBatch kept failing for {len(entries)} chunks")


class Pacer:
    """When each chunk of a pass may become visible: ``until`` is the epoch the queued work reaches."""

    def __init__(self, until: float, rate: int):
        self.until, self.rate = float(until or 0), max(1, rate)

    def ahead(self) -> float:
        return max(0.0, self.until - clock.now())

    def room(self) -> int:
        """Recipients that still fit in the window."""
        return int((WINDOW - self.ahead()) * self.rate)

    def delay(self, size: int) -> int:
        """The DelaySeconds of the next chunk of ``size`` entries."""
        delay = math.floor(self.ahead())
        self.until = max(self.until, clock.now()) + size / self.rate
        return delay


def _chunk(bid: str, wave: str, variant: str | None, ids: list[str]) -> dict:
    """A queue message: ``b`` broadcast, ``w`` wave, ``v`` variant, ``c`` contact ids, ``id`` its id."""
    return {"id": tokens.digest_id("bk", bid, wave, variant or "", ids[0]), "b": bid, "w": wave, "v": variant,
            "c": ids}


def _split(ids: list[str]) -> list[list[str]]:
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


def _hand_off(bid: str, wave: str, cursor: dict, later: bool) -> dict:
    """Go on from ``cursor``: ``CONTINUE`` seconds later (the window is full: a control message in the
    queue) or at once (this invocation's time is up)."""
    entry = due(bid, wave, cursor=cursor)
    if later:
        send_chunks([({"due": json.loads(entry["Detail"])}, CONTINUE)])
    else:
        bus.publish(entry)
    return {"wave": wave, "continued": "later" if later else "now", "cursor": cursor}


# ---------------------------------------------------------------- the audience
def sample(bid: str, cid: str, ab: dict) -> str | None:
    """The A/B variant ``cid`` gets in the sample (deterministic; the variants share the sample
    evenly), or None: not in the sample."""
    point = int.from_bytes(hashlib.sha256(f"{bid}\x1f{cid}".encode()).digest()[:8], "big") / 2 ** 64
    share = ab["sample_percent"] / 100
    if point >= share:
        return None
    names = sorted(ab["subjects"])
    return names[min(len(names) - 1, int(point / share * len(names)))]


def _local_instants(when: dict, ids: list[str]) -> dict[str, list]:
    """cid -> (epoch of ``when["local"]`` on ``when["date"]`` in the contact's zone, else the fallback
    zone; that zone's name), from one BatchGetItem of the profiles' zones."""
    fallback, hh, mm = when["fallback_zone"], *map(int, when["local"].split(":"))
    day = datetime.fromisoformat(when["date"])
    out = {}
    for contact in Contact.batch_get([(cid, PROFILE) for cid in ids], attributes_to_get=["pk", "sk", "timezone"]):
        name = contact.timezone or fallback
        try:
            zone = ZoneInfo(name)
        except Exception:  # noqa: BLE001 - a stored zone that does not load: the fallback's
            name, zone = fallback, ZoneInfo(fallback)
        out[contact.pk] = (day.replace(hour=hh, minute=mm, tzinfo=zone).timestamp(), name)
    return out


def _main(bid: str, state: dict, spec: dict, cursor: dict, deadline: float) -> dict:
    included, when, ab = specs.included(spec), state.get("when") or {}, spec.get("ab")
    pacer = Pacer(cursor.get("until", 0), _rate())
    position, after = cursor.get("s", 0), cursor.get("after")
    if not cursor:  # planned from the start: a later wave finishing first must not look like the end
        counters.add(bid, {}, waves=[MAIN])
    pages = 0
    while position < len(included):
        here = {"s": position, "after": after, "until": pacer.until}
        if pages and time.monotonic() > deadline:
            return _hand_off(bid, MAIN, here, later=False)
        room = pacer.room()
        if room < CHUNK:
            return _hand_off(bid, MAIN, here, later=True)
        segment = included[position]
        page_cursor = json.dumps({"gsi1pk": {"S": f"SEG#{segment}"}, "gsi1sk": {"S": after}, "pk": {"S": after},
                                  "sk": {"S": f"SEG#{segment}"}}, sort_keys=True) if after else None
        ids, more = segments.members(segment, limit=PAGE if (ab or "local" in when) else min(PAGE, room),
                                     cursor=page_cursor)
        now_groups: dict[str | None, list[str]] = {}
        later: dict[str, list[str]] = {}
        zones: dict[str, tuple[str, str]] = {}  # wave -> (local time, zone) of its schedule
        instants = _local_instants(when, ids) if "local" in when else {}
        for cid in ids:
            if ab:
                variant = sample(bid, cid, ab)
                (now_groups.setdefault(variant, []) if variant else later.setdefault(AB, [])).append(cid)
            elif cid in instants and instants[cid][0] > clock.now() + 60:
                at, zone = instants[cid]
                wave = f"w{int(at)}"
                later.setdefault(wave, []).append(cid)
                zones.setdefault(wave, (datetime.fromtimestamp(at, ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M:%S"), zone))
            else:
                now_groups.setdefault(None, []).append(cid)
        for wave, group in later.items():
            store.put_chunks(bid, f"WAVE#{wave}#", {c["id"]: c for c in (_chunk(bid, wave, None, part)
                                                                           for part in _split(group))},
                             expires_at=int(clock.now()) + CHUNK_TTL)
        if zones:
            names = [_schedule(bid, wave, local, zone) for wave, (local, zone) in sorted(zones.items())]
            store.add_schedules(bid, names)
            counters.add(bid, {}, waves=list(zones))
        bodies = [(_chunk(bid, MAIN, variant, part), 0) for variant, group in sorted(now_groups.items(),
                                                                                     key=lambda g: g[0] or "")
                  for part in _split(group)]
        bodies = [(body, pacer.delay(len(body["c"]))) for body, _ in bodies]
        send_chunks(bodies)
        counters.add(bid, {"enqueued": sum(len(b["c"]) for b, _ in bodies)})
        pages += 1
        if more is None:
            position, after = position + 1, None
        else:
            after = ids[-1]
    waves = [MAIN]
    if ab:  # the rest waits for the winner: wait_hours after the sample's last chunk is due
        at = max(pacer.until, clock.now()) + float(ab["wait_hours"]) * 3600
        store.add_schedules(bid, [_schedule(bid, AB, _utc(at), "UTC")])
        waves.append(AB)
    return _finish_wave(bid, MAIN, counters.add(bid, {}, waves=waves, done=[MAIN]))


def _finish_wave(bid: str, wave: str, counts: dict) -> dict:
    counters.finish(bid, counts)
    return {"wave": wave, "done": True}


def _wave(bid: str, state: dict, spec: dict, wave: str, cursor: dict, deadline: float) -> dict:
    """Enqueue a later wave's chunk items (the A/B rest with the winner's subject)."""
    variant = None
    if wave == AB:
        variant = state.get("winner") or pick_winner(bid, spec)
    pacer, start, pages = Pacer(cursor.get("until", 0), _rate()), cursor.get("after"), 0
    while True:
        if pages and time.monotonic() > deadline:
            return _hand_off(bid, wave, {"after": start, "until": pacer.until}, later=False)
        room = pacer.room()
        if room < CHUNK:
            return _hand_off(bid, wave, {"after": start, "until": pacer.until}, later=True)
        items, start = store.chunks(bid, f"WAVE#{wave}#", cursor=start, limit=max(1, min(100, room // CHUNK)))
        bodies = [({**body, "v": variant}, pacer.delay(len(body["c"]))) for _sk, body in items]
        send_chunks(bodies)
        counters.add(bid, {"enqueued": sum(len(b["c"]) for b, _ in bodies)})
        pages += 1
        if start is None:
            return _finish_wave(bid, wave, counters.add(bid, {}, done=[wave]))


def pick_winner(bid: str, spec: dict) -> str:
    """The sample's better variant by the test's metric (human clicks or opens per email sent),
    recorded on the broadcast once (the first recorded winner stays) with the figures it was judged on.
    A tie on the metric (often: nobody clicked yet) is judged on the other one; a tie on both goes to
    the first variant, and the record says so."""
    counts = counters.by_variant(counters.counters(bid))
    metric = spec["ab"]["metric"]
    other = "opens" if metric == "clicks" else "clicks"
    names = sorted(spec["ab"]["subjects"])

    def rate(variant: str, on: str) -> float:
        c = counts.get(variant, {})
        return c.get(f"human_{on}", 0) / c["sent"] if c.get("sent") else 0.0

    best, runner_up = sorted(names, key=lambda v: (-rate(v, metric), -rate(v, other), names.index(v)))[:2]
    by = next((on for on in (metric, other) if rate(best, on) != rate(runner_up, on)), "tie")
    sample = {v: {"sent": counts.get(v, {}).get("sent", 0), "opens": counts.get(v, {}).get("human_opens", 0),
                  "clicks": counts.get(v, {}).get("human_clicks", 0)} for v in names}
    return store.set_winner(bid, best, {"metric": metric, "by": by, "at": clock.iso(), "sample": sample})


def _rate() -> int:
    from funnelpilot.sending import pace

    return pace.rate()


# ---------------------------------------------------------------- control waves
def _plan(bid: str, state: dict) -> dict:
    """The main wave's schedule (``at``, or the earliest zone's ``local`` time), or the wave at once."""
    when = state.get("when") or {}
    if "at" in when:
        at = datetime.fromisoformat(when["at"].replace("Z", "+00:00")).timestamp()
        local, zone = _utc(at), "UTC"
    else:
        at = datetime.fromisoformat(f"{when['date']}T{when['local']}").replace(tzinfo=ZoneInfo(EARLIEST)).timestamp()
        local, zone = f"{when['date']}T{when['local']}:00", EARLIEST
    unschedule(state.get("schedules") or [])  # a new time replaces the old one
    if at <= clock.now() + 60:
        bus.publish(due(bid, MAIN, plan=state["plan"]))
        return {"wave": "plan", "main": "now"}
    store.add_schedules(bid, [_schedule(bid, MAIN, local, zone, plan=state["plan"])])
    return {"wave": "plan", "main": f"at({local}) {zone}"}


def _resume(bid: str) -> dict:
    """Send again what the pause held: chunks (to the queue, paced) and waves (their ``broadcast.due``)."""
    pacer, start, sent = Pacer(0, _rate()), None, 0
    while True:
        items, start = store.chunks(bid, "HELD#", cursor=start)
        for sk, body in items:
            if not store.take_chunk(bid, sk):
                continue  # another resume (or the worker that held it) took it
            if "due" in body:
                bus.publish(again(body["due"]))
            else:
                send_chunks([(body, pacer.delay(len(body["c"])))])
            sent += 1
        if start is None:
            return {"wave": "resume", "released": sent}


def run(detail: dict, remaining_seconds) -> dict:
    """Handle one ``broadcast.due`` (``remaining_seconds()``: the invocation's time left)."""
    bid, wave = detail["broadcast_id"], detail.get("wave", MAIN)
    left = remaining_seconds()
    deadline = time.monotonic() + left - min(SAFETY, left / 2)
    state = store.state(bid)
    if state is None:
        return {"wave": wave, "skipped": "unknown broadcast"}
    if wave == "cancel":
        unschedule(state.get("schedules") or [])
        return {"wave": wave, "unscheduled": len(state.get("schedules") or [])}
    if state["status"] == store.CANCELLED or (wave == "plan" and state["status"] != store.SCHEDULED):
        return {"wave": wave, "skipped": state["status"]}
    if wave in ("plan", MAIN) and "cursor" not in detail and detail.get("plan") != state.get("plan"):
        return {"wave": wave, "skipped": "an earlier schedule"}  # it was scheduled again since
    if wave == "resume":
        return _resume(bid)
    if state["status"] == store.PAUSED and store.hold(bid, f"due-{wave}", {"due": detail}):
        return {"wave": wave, "held": True}  # resume publishes it again
    if wave == "plan":
        return _plan(bid, state)
    if wave == MAIN and not store.transition(bid, store.SENDING, (store.SCHEDULED,), started_at=clock.iso()) \
            and state["status"] not in (store.SENDING,):
        return {"wave": wave, "skipped": state["status"]}
    spec = store.spec(bid, state["digest"])
    cursor = detail.get("cursor") or {}
    return _main(bid, state, spec, cursor, deadline) if wave == MAIN else _wave(bid, state, spec, wave, cursor,
                                                                                 deadline)

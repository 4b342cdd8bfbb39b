"""When a funnel may send: local times of day, quiet hours and the Waits that end outside them.

The compiler turns a ``wait`` that leads to a marketing send (in a funnel with quiet hours),
and every ``wait: {until: HH:MM}``, into a Wait on ``SecondsPath``: the state before it (a
Task, or the router for a funnel's first state) computes the seconds with ``wait_seconds``,
so a send the Wait would bring into quiet hours is deferred by a longer Wait, not by a detour;
the Waits that end with quiet hours end at each contact's own minute of ``spread_minutes``.
"""
import hashlib
import logging
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from funnelpilot import clock

logger = logging.getLogger(__name__)


def zone(contact_zone: str | None, funnel_zone: str | None) -> ZoneInfo:
    """The contact's IANA zone, else the funnel's, else UTC. A stored value never fails a step:
    any error loading it (``Europe`` is a directory: IsADirectoryError) is logged with whose zone
    and the reason (never the value) and the next one is tried."""
    for whose, name in (("contact", contact_zone), ("funnel", funnel_zone)):
        if name:
            try:
                return ZoneInfo(name)
            except Exception as exc:  # noqa: BLE001 - whatever the stored text, fall back
                logger.warning("time zone fallback", extra={"zone": whose, "reason": type(exc).__name__})
    return ZoneInfo("UTC")


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _at(day, clock_time: time, tz: ZoneInfo) -> float:
    """Epoch of a wall-clock time on a local day (DST-aware)."""
    return datetime.combine(day, clock_time, tzinfo=tz).timestamp()


def next_local(clock_time: str, tz: ZoneInfo, now: float) -> float:
    """Epoch of the next ``HH:MM`` in ``tz`` at or after ``now``."""
    local = datetime.fromtimestamp(now, tz)
    at = _at(local.date(), _hhmm(clock_time), tz)
    return at if at >= now else _at(local.date() + timedelta(days=1), _hhmm(clock_time), tz)


def quiet_until(quiet: tuple[str, str] | None, tz: ZoneInfo, now: float) -> float | None:
    """End (epoch) of the quiet period ``now`` falls in, or None when sending is allowed."""
    if not quiet:
        return None
    start, end = _hhmm(quiet[0]), _hhmm(quiet[1])
    t = datetime.fromtimestamp(now, tz).time()
    inside = start <= t < end if start <= end else (t >= start or t < end)
    return next_local(quiet[1], tz, now) if inside else None


def spread(key: str, minutes: int) -> int:
    """A contact's own seconds (0 up to ``minutes``) after the end of quiet hours: deterministic per
    ``key`` (the contact id), so the sends a zone's night held do not all start at the same second."""
    if minutes <= 0:
        return 0
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (minutes * 60)


def wait_seconds(wait: dict, spec, contact_zone: str | None, key: str, now: float | None = None) -> int:
    """Real seconds for a computed Wait (``wait``: the compiler's ``{"seconds": n}`` or
    ``{"until": "HH:MM"}``, with ``"quiet": true`` when a marketing send follows it): its end,
    moved past the end of the funnel's quiet hours (``spec``: funnel_spec.load) if it falls in
    them, by the contact's ``spread`` (``key``: the contact id) within the funnel's ``spread_minutes``."""
    now = clock.now() if now is None else now
    tz = zone(contact_zone, spec.timezone)
    end = next_local(wait["until"], tz, now) if "until" in wait else now + float(wait.get("seconds") or 0)
    if wait.get("quiet"):
        quiet_end = quiet_until(spec.quiet_hours, tz, end)
        if quiet_end is not None:
            end = quiet_end + spread(key, spec.quiet_spread)
    return clock.real_seconds(end - now)

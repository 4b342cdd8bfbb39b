"""Schedules on the simulated clock: template ``Schedule`` / ``ScheduleV2`` events (rate, cron)
and EventBridge Scheduler schedules created through the API (one-time ``at(...)``, rate, cron).

The runtime calls ``due(...)`` from ``pump()``; every occurrence between the last check and
``clock.now()`` fires once, in order (a job that "missed" simulated days catches up, each
occurrence with its own scheduled time, as Scheduler would have run them).
"""
import calendar
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT = {"minute": 60, "hour": 3600, "day": 86400}
_DOW = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
_MON = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}


def _field(spec: str, low: int, high: int, names: dict | None = None) -> set[int] | None:
    """Values a cron field allows (None = any: ``*`` or ``?``)."""
    if spec in ("*", "?"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_s = part.split("/")
            step = int(step_s)
        if part in ("*", ""):
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-")
            start, end = _num(a, names), _num(b, names)
        else:
            start = _num(part, names)
            end = high if step > 1 else start
        out.update(range(start, end + 1, step))
    return out


def _num(text: str, names: dict | None) -> int:
    return names[text.upper()] if names and text.upper() in names else int(text)


def next_time(expression: str, after: float, zone: str | None = None) -> float | None:
    """The first occurrence strictly after ``after`` (epoch seconds), or None. An ``at(...)`` is a
    wall-clock time in ``zone`` (a schedule's ``ScheduleExpressionTimezone``; default UTC)."""
    expression = expression.strip()
    if m := _RATE.match(expression):
        unit = m.group(2).rstrip("s")
        return after + int(m.group(1)) * _UNIT[unit]
    if m := _AT.match(expression):
        tz = ZoneInfo(zone) if zone and zone != "UTC" else timezone.utc
        at = datetime.fromisoformat(m.group(1)).replace(tzinfo=tz).timestamp()
        return at if at > after else None
    if m := _CRON.match(expression):
        return _next_cron(m.group(1).split(), after)
    raise ValueError(f"unsupported schedule expression {expression!r}")


def _next_cron(fields: list[str], after: float) -> float | None:
    if len(fields) != 6:
        raise ValueError(f"cron needs 6 fields (minutes hours day-of-month month day-of-week year): {fields}")
    minutes, hours = _field(fields[0], 0, 59), _field(fields[1], 0, 23)
    dom, months = _field(fields[2], 1, 31), _field(fields[3], 1, 12, _MON)
    dow, years = _field(fields[4], 1, 7, _DOW), _field(fields[5], 1970, 2199)
    t = datetime.fromtimestamp(after, tz=timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t + timedelta(days=366 * 5)
    while t < limit:
        day_ok = ((months is None or t.month in months) and (years is None or t.year in years)
                  and (dom is None or t.day in dom) and (dow is None or (t.isoweekday() % 7) + 1 in dow))
        if not day_ok:
            t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            continue
        if hours is not None and t.hour not in hours:
            t = (t + timedelta(hours=1)).replace(minute=0)
            continue
        if minutes is not None and t.minute not in minutes:
            t += timedelta(minutes=1)
            continue
        return t.timestamp()
    return None


def occurrences(expression: str, after: float, until: float, zone: str | None = None) -> list[float]:
    """Every occurrence in (after, until] (``zone``: see ``next_time``)."""
    out = []
    t = next_time(expression, after, zone)
    while t is not None and t <= until:
        out.append(t)
        t = next_time(expression, t, zone)
    return out


def scheduler_input(text: str | None, *, scheduled: float, schedule_arn: str, execution_id: str) -> str:
    """Scheduler's context attributes substituted into a target's Input."""
    if text is None:
        return "{}"
    iso = datetime.fromtimestamp(scheduled, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for key, value in {"scheduled-time": iso, "schedule-arn": schedule_arn,
                       "execution-id": execution_id, "attempt-number": "1"}.items():
        text = text.replace(f"<aws.scheduler.{key}>", value)
    return text

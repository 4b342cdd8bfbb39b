"""The one clock every module reads.

On AWS it is wall-clock time. The local runtime speeds it up (``configure(speed=86400)``
makes a simulated day pass in a real second) so that funnels spanning weeks run in
seconds; Wait states are shortened by the same factor, keeping both views consistent. In the
stepped mode (``configure(stepped=True)``, the deterministic demo) time stands still
until the local runtime moves it with ``advance_to``.
"""
import math
import time
from datetime import datetime, timezone

_speed = 1.0
_real0 = time.time()
_virtual0 = _real0
_stepped = False
_sleeper = None  # stepped mode: the local runtime's wait on the virtual clock (funnelpilot_local.moto_adapter)


def configure(speed: float = 1.0, start: float | None = None, stepped: bool = False) -> None:
    global _speed, _real0, _virtual0, _stepped
    _real0 = time.time()
    _virtual0 = _real0 if start is None else start
    _speed = 1.0 if stepped else float(speed)
    _stepped = stepped


def advance_to(ts: float) -> None:
    """Stepped mode: move the clock forward (never back) to ``ts``."""
    global _virtual0
    if not _stepped:
        raise RuntimeError("advance_to needs clock.configure(stepped=True)")
    _virtual0 = max(_virtual0, ts)


def sleep(seconds: float) -> bool:
    """Let ``seconds`` of this clock pass in the calling thread; False when it cannot (stepped mode:
    only the threads of the runtime's state machines wait on the virtual clock, its own never)."""
    if _stepped:
        return bool(_sleeper and _sleeper(seconds))
    time.sleep(max(0.0, seconds) / _speed)
    return True


def speed() -> float:
    return _speed


def now() -> float:
    """Seconds since the epoch on the (possibly compressed or stepped) clock."""
    if _stepped:
        return _virtual0
    return _virtual0 + (time.time() - _real0) * _speed


def utcnow() -> datetime:
    return datetime.fromtimestamp(now(), tz=timezone.utc)


def iso(ts: float | None = None) -> str:
    dt = datetime.fromtimestamp(now() if ts is None else ts, tz=timezone.utc)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def real_seconds(virtual_seconds: float) -> int:
    """How long to really wait for a simulated duration (whole seconds, as ASL requires)."""
    if virtual_seconds <= 0:
        return 0
    return max(1, math.ceil(virtual_seconds / _speed))

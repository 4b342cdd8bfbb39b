"""Lambda: the account's concurrency (``Rules.lambda_concurrency``; a new account can have 10).

Every handler invocation takes a slot in :meth:`Concurrency.slot` (``Runtime.invoke`` is the
one entry point: HTTP routes, Step Functions Lambda tasks, EventBridge rule targets); past
the limit the invoke fails with ``TooManyRequestsException`` (429) as Lambda's Invoke does.
Who then retries is the caller's business, as on AWS: a Step Functions task sees
``Lambda.TooManyRequestsException`` (the funnels' Retry), API Gateway answers 500, and an
asynchronous delivery goes back to the function's event queue (``Runtime._deliver_one``).

A slot is held while the handler runs and at least ``HOLD`` seconds of simulated time. In
stepped mode the clock stands still while handlers run, so the invocations of one simulated
instant all overlap (as a burst arriving at once does on AWS) and which of them are
throttled depends only on their order, which stepped mode fixes: runs stay deterministic.
At speed, ``HOLD`` is a few microseconds of real time: the count is the real one.
"""
import contextlib
import heapq
import random
import threading

from botocore.exceptions import ClientError

from funnelpilot import clock
from funnelpilot_local.aws_rules import Rule, error

HOLD = 0.1  # simulated seconds an invocation keeps its slot at least (a typical handler's duration)
# Lambda's async queue (invocation-async-error-handling): throttles are retried for up to
# 6 hours, from 1 s, doubling up to 5 minutes, and do not count against MaximumRetryAttempts.
ASYNC_THROTTLE_MAX_AGE = 6 * 3600
ASYNC_THROTTLE_FIRST, ASYNC_THROTTLE_MAX = 1.0, 300.0


class Throttled(ClientError):
    """Lambda's 429 ``TooManyRequestsException`` for an invoke it refused (the function did not run)."""


def is_throttle(exc: BaseException) -> bool:
    return isinstance(exc, Throttled)


class Concurrency(Rule):
    """Counts invocations in flight account-wide; the gate has nothing to check (invokes are
    dispatched by the runtime, not through the Lambda API)."""

    def __init__(self, limit: int, seed: int = 0):
        self.limit = limit
        self._random = random.Random(seed)  # drawn by the runtime's delivery loop only: one order in stepped mode
        self.throttled = 0  # invocations refused so far
        self._running = 0
        self._held: list[float] = []  # heap: simulated times at which finished invocations free their slot
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, function: str):
        started = clock.now()
        with self._lock:
            while self._held and self._held[0] <= started:
                heapq.heappop(self._held)
            if self._running + len(self._held) >= self.limit:
                self.throttled += 1
                refused = error("Invoke", "TooManyRequestsException", "Rate Exceeded.", 429,
                                Reason="ConcurrentInvocationLimitExceeded", Type="User")
                raise Throttled(refused.response, refused.operation_name)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                heapq.heappush(self._held, started + HOLD)

    def async_backoff(self, throttles: int) -> float:
        """Seconds before the ``throttles``-th retry of a throttled asynchronous invocation:
        exponential with jitter (half to all of it), or the events throttled together would
        all come back at the same instant and only ``limit`` of them would get through."""
        backoff = min(ASYNC_THROTTLE_MAX, ASYNC_THROTTLE_FIRST * 2 ** (throttles - 1))
        return backoff * (0.5 + self._random.random() / 2)

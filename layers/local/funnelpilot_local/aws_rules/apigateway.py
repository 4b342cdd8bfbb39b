"""API Gateway HTTP API: route throttling (``Rules.api_throttling``).

The template's ``AWS::Serverless::HttpApi`` sets ``ThrottlingBurstLimit`` (bucket size) and
``ThrottlingRateLimit`` (refill per second) in ``DefaultRouteSettings`` (every route) and
``RouteSettings`` (per route key, e.g. ``"POST /collect"``, field by field over the default).
Each route has its own token bucket; a request finding it empty gets 429
``{"message":"Too Many Requests"}`` without its function being invoked. The bucket refills
on the runtime's clock: in stepped mode a test that fires more than a burst of requests at
one simulated instant is throttled, as that many requests arriving at once would be.
"""
import threading

from funnelpilot import clock
from funnelpilot_local.aws_rules import Rule


class RouteThrottle(Rule):
    """Token buckets per route key; the gate has nothing to check (requests reach the
    runtime's ``http``, not an AWS API)."""

    def __init__(self, template, enabled: bool = True):
        self.enabled = enabled
        self._limits: dict[str, tuple[float, float]] = {}  # route key -> (burst, rate per second)
        self._default: dict = {}
        for lid in template.of_type("AWS::Serverless::HttpApi"):
            props = template.resolve(template.properties(lid))
            self._default = {**self._default, **props.get("DefaultRouteSettings", {})}
            for key, settings in props.get("RouteSettings", {}).items():
                self._limits[key] = settings
        self._buckets: dict[str, list[float]] = {}  # route key -> [tokens, last refill]
        self._lock = threading.Lock()

    def limits(self, route_key: str) -> tuple[float, float] | None:
        """(burst, rate) for a route, None when neither the route nor the default sets both."""
        settings = {**self._default, **self._limits.get(route_key, {})}
        if "ThrottlingBurstLimit" not in settings or "ThrottlingRateLimit" not in settings:
            return None
        return float(settings["ThrottlingBurstLimit"]), float(settings["ThrottlingRateLimit"])

    def allow(self, route_key: str) -> bool:
        """Take a token from the route's bucket; False when it is empty (answer 429)."""
        limits = self.limits(route_key) if self.enabled else None
        if limits is None:
            return True
        burst, rate = limits
        now = clock.now()
        with self._lock:
            tokens, last = self._buckets.get(route_key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - last) * rate)
            allowed = tokens >= 1
            self._buckets[route_key] = [tokens - 1 if allowed else tokens, now]
        return allowed

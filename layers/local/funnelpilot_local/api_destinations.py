"""EventBridge API destinations on the local runtime: moto matches a rule whose target is an API
destination but calls nothing, so the runtime makes the HTTP request itself, as EventBridge
documents it (user guide, "API destinations"):

- POST (the destination's ``HttpMethod``) of the target's input (the event, or what its
  InputPath/InputTransformer selects) as JSON, with EventBridge's own headers (``User-Agent:
  Amazon/EventBridge/ApiDestinations``, ``Content-Type: application/json; charset=utf-8``, ...)
  and the connection's authorization (its API-key header, or basic auth);
- a response within 5 seconds, else the request timed out;
- 429, 5xx (and 401, 407, 409), timeouts and connection errors are retried within the target's
  RetryPolicy (``MaximumRetryAttempts``, ``MaximumEventAgeInSeconds``; the wait is the longer of
  ours and the endpoint's ``Retry-After``, a negative ``Retry-After`` stops), any other answer
  is final: a 2xx delivered, another 4xx (or 1xx, 3xx) dead-lettered at once;
- strict IAM: the target's role must allow ``events:InvokeApiDestination`` on the destination,
  else the event goes to the dead-letter queue unsent.

Locally, only an endpoint on a loopback host (127.0.0.1, localhost) is called, over plain HTTP (no
TLS; tests run one). Any other (the demo's example.com CRM, your real one) is not: a laptop's
tests and demos must not post to a real CRM with its real secret. The request is written to
``.local/outbox-webhooks/<n>.json`` (url, headers, body) and answered 200. Retries wait
``min(2 ** attempt, 300)`` seconds on the runtime's clock (EventBridge adds jitter). The
invocation rate limit is not enforced.
"""
import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

TIMEOUT = 5.0  # seconds: EventBridge times out an API destination request after 5 s
HEADERS = {"User-Agent": "Amazon/EventBridge/ApiDestinations", "Content-Type": "application/json; charset=utf-8",
           "Range": "bytes=0-1048575", "Accept-Encoding": "gzip,deflate", "Connection": "close"}
RETRIED = {401, 407, 409, 429}  # and every 5xx
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Destination:
    endpoint: str
    method: str
    auth: dict  # header -> value (API key, or Authorization: Basic ...)
    role: str | None = None  # the rule target's RoleArn
    retries: int = 185
    max_age: float = 86_400.0
    dead_letter_queue: str | None = None


@dataclass
class Attempt:
    """One HTTP request made (or written to the outbox)."""

    destination: str  # the API destination's ARN
    url: str
    headers: dict
    body: bytes
    attempt: int
    status: int | None  # None: no answer (timeout, connection refused)
    error: str | None = None
    outbox: Path | None = None


@dataclass
class ApiDestinations:
    outbox: Path
    destinations: dict[str, Destination] = field(default_factory=dict)  # by ARN
    attempts: list[Attempt] = field(default_factory=list)

    def add(self, arn: str, props: dict, connection: dict) -> None:
        """An ``AWS::Events::ApiDestination`` (its properties resolved) and its connection's."""
        params = connection.get("AuthParameters", {})
        if connection.get("AuthorizationType") == "BASIC":
            basic = params["BasicAuthParameters"]
            token = base64.b64encode(f"{basic['Username']}:{basic['Password']}".encode()).decode()
            auth = {"Authorization": f"Basic {token}"}
        elif connection.get("AuthorizationType") == "API_KEY":
            key = params["ApiKeyAuthParameters"]
            auth = {key["ApiKeyName"]: key["ApiKeyValue"]}
        else:
            raise ValueError(f"template.yaml: connection authorization {connection.get('AuthorizationType')!r}"
                             " has no local equivalent (API_KEY or BASIC)")
        self.destinations[arn] = Destination(props["InvocationEndpoint"], props.get("HttpMethod", "POST"), auth)

    def target(self, target: dict) -> None:
        """A rule target naming an API destination: its role, retry policy and dead-letter queue."""
        dest = self.destinations[target["Arn"]]
        policy = target.get("RetryPolicy", {})
        dest.role = target.get("RoleArn")
        dest.retries = int(policy.get("MaximumRetryAttempts", 185))
        dest.max_age = float(policy.get("MaximumEventAgeInSeconds", 86_400))
        dest.dead_letter_queue = target.get("DeadLetterConfig", {}).get("Arn")

    def call(self, arn: str, payload, attempt: int) -> tuple[int | None, float | None, str | None]:
        """One request: (status or None, Retry-After seconds or None, error or None)."""
        dest = self.destinations[arn]
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        headers = {**HEADERS, **dest.auth}
        parts = urlsplit(dest.endpoint)
        host = (parts.hostname or "").lower()
        if host not in LOOPBACK:
            self.outbox.mkdir(parents=True, exist_ok=True)
            path = self.outbox / f"{len(list(self.outbox.glob('*.json'))) + 1:04d}.json"
            path.write_text(json.dumps({"url": dest.endpoint, "method": dest.method, "headers": headers,
                                        "body": json.loads(body)}, indent=2) + "\n")
            self.attempts.append(Attempt(arn, dest.endpoint, headers, body, attempt, 200, outbox=path))
            return 200, None, None
        url = urlunsplit(("http", *parts[1:]))
        request = urllib.request.Request(url, data=body, method=dest.method, headers=headers)
        status, retry_after, error = None, None, None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:  # noqa: S310 - the template's endpoint
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                retry_after = float(exc.headers.get("Retry-After")) if exc.headers.get("Retry-After") else None
            except ValueError:
                retry_after = None
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            error = repr(getattr(exc, "reason", exc))
        self.attempts.append(Attempt(arn, url, headers, body, attempt, status, error))
        return status, retry_after, error

    def retry_in(self, arn: str, status: int | None, retry_after: float | None, attempt: int,
                 age: float) -> float | None:
        """Seconds until the next attempt, or None: do not retry (delivered, a final answer, the
        retry policy spent)."""
        if status is not None and (200 <= status < 300 or not (status in RETRIED or status >= 500)):
            return None
        if retry_after is not None and retry_after < 0:
            return None
        dest = self.destinations[arn]
        wait = max(float(min(2 ** attempt, 300)), retry_after or 0.0)
        if attempt >= dest.retries or age + wait > dest.max_age:
            return None
        return wait

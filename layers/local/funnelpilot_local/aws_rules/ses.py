"""SES as an account enforces it (moto checks only that the sender is verified).

- Sandbox (``Rules.ses_sandbox``, what every new account is, per region): a message to a
  recipient that is not a verified identity is refused with ``MessageRejected`` ("Email
  address is not verified. The following identities failed the check in region ...");
  verified are the template's ``AWS::SES::EmailIdentity`` (an address or a domain),
  ``Rules.ses_verified`` and ``Rules.ses_existing_identities``, whatever is verified through the API while the runtime runs (moto
  verifies at once; AWS waits for the link in the email), and the mailbox simulator. At most
  200 messages per rolling 24 hours and 1 per second.
- Production (default): ``Rules.ses_max_send_rate`` per second and ``Rules.ses_max_24h`` per
  rolling 24 hours (-1: unlimited), answered as SES's v1 API does: ``Throttling`` "Maximum
  sending rate exceeded." / "Daily message quota exceeded.".
- ``GetSendQuota`` answers those limits and what was sent in the last 24 hours.

Quotas count recipients, not calls; a send passes while a whole message is left in the
second's budget (so a send to several recipients may overdraw it, as SES lets it) or the
day's. Time is the runtime clock (``funnelpilot.clock``). Checked against
https://docs.aws.amazon.com/ses/latest/dg/request-production-access.html,
https://docs.aws.amazon.com/ses/latest/dg/quotas.html and
https://docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html.
"""
import collections
import threading
from email import message_from_bytes
from email.utils import getaddresses, parseaddr

from funnelpilot import clock
from funnelpilot_local.aws_rules import Call, Rule, Rules, error
from funnelpilot_local.template import REGION, Template

SANDBOX_24H, SANDBOX_RATE = 200, 1.0
SIMULATOR = "simulator.amazonses.com"  # the mailbox simulator takes mail in the sandbox too
DAY = 86_400.0
SENDS = {"SendEmail", "SendRawEmail", "SendTemplatedEmail", "SendBulkTemplatedEmail"}
VERIFY = {"VerifyEmailIdentity": "EmailAddress", "VerifyEmailAddress": "EmailAddress", "VerifyDomainIdentity": "Domain"}


def recipients(operation: str, params: dict) -> list[str]:
    """The addresses a send goes to (each counts against the quotas)."""
    if operation == "SendRawEmail":
        if params.get("Destinations"):
            listed = params["Destinations"]
        else:
            data = params["RawMessage"]["Data"]
            headers = message_from_bytes(data if isinstance(data, bytes) else data.encode())
            listed = [v for h in ("To", "Cc", "Bcc") for v in headers.get_all(h, [])]
        return [a for _, a in getaddresses(listed) if a]
    destinations = ([d.get("Destination", {}) for d in params.get("Destinations", [])]
                    if operation == "SendBulkTemplatedEmail" else [params.get("Destination", {})])
    return [parseaddr(a)[1] for d in destinations
            for a in d.get("ToAddresses", []) + d.get("CcAddresses", []) + d.get("BccAddresses", [])]


def _refusal(call: Call, code: str, message: str) -> Exception:
    """SES's error, as the modeled exception class botocore raises for the code
    (``client.exceptions.MessageRejected``), a plain ``ClientError`` for ``Throttling``."""
    plain = error(call.operation, code, message)
    return call.client.exceptions.from_code(code)(plain.response, call.operation) if call.client else plain


class Ses(Rule):
    def __init__(self, rules: Rules, template: Template):
        self.sandbox = rules.ses_sandbox
        self.rate = SANDBOX_RATE if self.sandbox else float(rules.ses_max_send_rate)
        self.max_24h = SANDBOX_24H if self.sandbox else int(rules.ses_max_24h)
        self.verified = {template.resolve(template.properties(lid)["EmailIdentity"])
                         for lid in template.of_type("AWS::SES::EmailIdentity")}
        self.verified |= set(rules.ses_verified) | set(rules.ses_existing_identities)
        self._lock = threading.Lock()
        self._sent: collections.deque = collections.deque()  # [time, recipients] of the last 24 h
        self._day_total = 0
        self._tokens, self._filled_at = max(self.rate, 1.0), None  # the per-second bucket

    def _is_verified(self, address: str) -> bool:
        domain = address.rsplit("@", 1)[-1].lower()
        return address in self.verified or domain in {v.lower() for v in self.verified} or domain == SIMULATOR

    def _refill(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - DAY:
            self._day_total -= self._sent.popleft()[1]
        if self._filled_at is not None:
            self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now

    def before(self, call: Call) -> None:
        if call.service != "ses" or call.operation not in SENDS:
            return
        to = recipients(call.operation, call.params)
        if self.sandbox:
            failed = [a for a in to if not self._is_verified(a)]
            if failed:
                raise _refusal(call, "MessageRejected", "Email address is not verified. The following identities "
                               f"failed the check in region {REGION.upper()}: {', '.join(failed)}")
        with self._lock:
            now = clock.now()
            self._refill(now)
            if 0 <= self.max_24h <= self._day_total:
                raise _refusal(call, "Throttling", "Daily message quota exceeded.")
            if self._tokens < 1:
                raise _refusal(call, "Throttling", "Maximum sending rate exceeded.")
            entry = [now, len(to)]
            self._sent.append(entry)
            self._day_total += len(to)
            self._tokens -= len(to)
            call.extra["ses"] = entry

    def after(self, call: Call, result: dict | None, failure: Exception | None) -> None:
        if call.service != "ses":
            return
        if "ses" in call.extra and failure is not None:  # not sent: give the reservation back
            with self._lock:
                entry = call.extra.pop("ses")
                if entry in self._sent:
                    self._sent.remove(entry)
                    self._day_total -= entry[1]
                self._tokens = min(max(self.rate, 1.0), self._tokens + entry[1])
        elif call.operation in VERIFY and failure is None:
            self.verified.add(call.params[VERIFY[call.operation]])
        elif call.operation == "DeleteIdentity" and failure is None:
            self.verified.discard(call.params["Identity"])
        elif call.operation == "GetSendQuota" and result is not None:
            with self._lock:
                self._refill(clock.now())
                result.update(Max24HourSend=float(self.max_24h), MaxSendRate=self.rate,
                              SentLast24Hours=float(self._day_total))

"""SMS through AWS End User Messaging SMS (API ``pinpoint-sms-voice-v2``, ``SendTextMessage``).

A funnel's ``sms`` step (``send``) has the eligibility of an email, in the same order, plus the
channel's own: the contact's phone number, SMS consent (given apart from the email's) and the
number's opt-out. Quiet hours and the frequency cap are the funnel's, shared with its emails (one
``marketing_log``: an SMS takes a slot as an email does). Texts are ``<content>/sms/<name>.txt.j2``
(jinja2 sandbox, the email context: ``first_name``, ``site_url``, ``fields``...); the compiler
checks each against ``MAX_SEGMENTS`` with the longest values a template may meet (``longest``). A
funnel's step renders the content version its state machine names (``version``: the compiler's copy
in ``<content>/sms/versions/<name>@<version>/``, as an email's; README "Changing a live funnel").

Opt-out: the service keeps the opt-out list of the origination number and adds a number that
replies STOP (or another opt-out keyword) to it; a send to a number on that list is refused
(``ConflictException``, reason ``DESTINATION_PHONE_NUMBER_OPTED_OUT``): the contact is marked
``sms_opted_out_at`` and no SMS is tried again. Delivery: the configuration set's event destination
(an SNS topic) feeds functions/sms_feedback (``feedback``): ``delivered`` / ``failed`` counted
on the step, from the ``Context`` each send carries (message, funnel, step, template).
"""
import json
from functools import cache
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from funnelpilot import aws, clock, funnel_spec, funnels, metrics, tokens
from funnelpilot.channels import emails
from funnelpilot.config import config
from funnelpilot.errors import QuietHours, TransientError
from funnelpilot.models import PROFILE, Message
from funnelpilot.sending import cap, checks, sendtime

SERVICE = "pinpoint-sms-voice-v2"
OPTED_OUT = "DESTINATION_PHONE_NUMBER_OPTED_OUT"
MAX_SEGMENTS = 1  # per marketing text unless its step allows more (`segments: 2`); each segment is billed
# GSM 03.38: the basic character set (one septet each) and its extension table (an escape plus one: two)
GSM_BASIC = frozenset("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
SEGMENT = {"GSM-7": (160, 153), "UCS-2": (70, 67)}  # (one segment, each segment of a longer text)
# Final delivery statuses (event types of the configuration set's events); TEXT_SUCCESSFUL: the carrier
# accepted it and reports nothing further (some countries)
DELIVERED = {"TEXT_DELIVERED", "TEXT_SUCCESSFUL"}
FAILED = {"TEXT_INVALID", "TEXT_INVALID_MESSAGE", "TEXT_UNREACHABLE", "TEXT_CARRIER_UNREACHABLE", "TEXT_BLOCKED",
          "TEXT_CARRIER_BLOCKED", "TEXT_SPAM", "TEXT_UNKNOWN", "TEXT_TTL_EXPIRED", "TEXT_PROTECT_BLOCKED"}


class OptedOut(Exception):
    """The number is on the origination identity's opt-out list."""


# ---------------------------------------------------------------- texts
def encoding(text: str) -> str:
    return "GSM-7" if all(c in GSM_BASIC or c in GSM_EXTENDED for c in text) else "UCS-2"


def measure(text: str) -> dict:
    """``{"encoding", "units", "segments"}``: GSM-7 counts septets (an extension character is two),
    UCS-2 UTF-16 code units (an emoji is two); 160/70 fit one segment, a longer text is sent in
    segments of 153/67."""
    kind = encoding(text)
    units = (sum(2 if c in GSM_EXTENDED else 1 for c in text) if kind == "GSM-7"
             else len(text.encode("utf-16-le")) // 2)
    single, part = SEGMENT[kind]
    return {"encoding": kind, "units": units, "segments": 1 if units <= single else -(-units // part)}


@cache
def _env(directory: str) -> SandboxedEnvironment:
    return SandboxedEnvironment(loader=FileSystemLoader(directory), undefined=StrictUndefined, trim_blocks=True,
                                lstrip_blocks=True)


def render(template: str, context: dict, version: str | None = None, *, directory: str | None = None) -> str:
    """The text of ``<content>/sms/<template>.txt.j2`` (of its content ``version``: the copy the
    compiler keeps, as an email's; or of ``directory``), its lines' outer whitespace removed."""
    directory = directory or emails.template_dir(template, version, "sms")
    text = _env(directory).get_template(f"{template}.txt.j2").render(context)
    return "\n".join(line.strip() for line in text.strip().splitlines())


def longest(template: str, content_dir: Path) -> dict:
    """``measure`` of the text with the longest values it may meet: a first name of 30 characters and
    the site's URL; what the compiler checks (a UCS-2 name would take more: the README says so)."""
    context = {"first_name": "N" * 30, "lead_magnet": "m" * 30, "contact_id": "c" * 26, "properties": {},
               "fields": {}, "unsubscribe_url": "", "public_url": config().public_url, "site_url": config().site_url}
    return measure(render(template, context, directory=str(content_dir / "sms")))


# ---------------------------------------------------------------- sending
def send_text(to: str, body: str, *, message_type: str, context: dict) -> str:
    """One SendTextMessage; the service's MessageId. ``OptedOut`` for a number on the opt-out list."""
    cfg = config()
    params = {"DestinationPhoneNumber": to, "OriginationIdentity": cfg.sms_origination, "MessageBody": body,
              "MessageType": message_type, "Context": {k: str(v) for k, v in context.items() if v}}
    if cfg.sms_configuration_set:
        params["ConfigurationSetName"] = cfg.sms_configuration_set
    try:
        return aws.client(SERVICE).send_text_message(**params)["MessageId"]
    except Exception as exc:
        if getattr(exc, "response", {}).get("Reason") == OPTED_OUT:
            raise OptedOut(to) from None
        raise


def ineligible(contact) -> str | None:
    """Why this contact cannot get a marketing SMS (beyond an email's reasons), or None."""
    if not contact.phone:
        return "no_phone"
    if not contact.sms_consent_at:
        return "no_sms_consent"
    if contact.sms_opted_out_at:
        return "sms_opted_out"
    return None


def _opted_out(cid: str) -> None:
    aws.conditional("update_item", Key={"pk": {"S": cid}, "sk": {"S": PROFILE}},
                    UpdateExpression="SET sms_opted_out_at = if_not_exists(sms_opted_out_at, :now)",
                    ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues={":now": {"S": clock.iso()}})


def send(step: dict) -> dict:
    """An ``sms`` step: the checks of an email send (sequence.send) in its order, then the SMS ones
    (``ineligible``), quiet hours, the message claim, the frequency cap, then SendTextMessage.
    Idempotent on (execution, state) as an email: a retry finds the message claimed, sent or blocked
    and sends nothing more (at least once: an attempt dying between the service's answer and the
    mark leaves the next one to send again, as SES). SMS off (no origination identity): nothing at all,
    not even a read, so a stack without SMS pays nothing for its funnels' sms steps but the Task."""
    from funnelpilot import sequence  # it imports this module (its ``sms`` action)

    cid, template = step["contact_id"], step["template"]
    message_id = tokens.digest_id("m", step["execution"], step["state"])
    if not config().sms_origination:
        return {"message_id": message_id, "status": "skipped", "reason": "sms_off"}
    contact = sequence._contact(cid)
    current = funnels.entry(cid, step["funnel"]) if contact is not None else None
    mine = current and current.get("execution_arn") in (None, step["execution"])
    spec = funnel_spec.load(step["funnel"])
    list_name = spec.list_name or (current.get("list_name") if mine else None)
    reason = checks.blocked_reason(contact, step, current.get("status") if mine else None, list_name)
    if reason in ("unknown_contact", "erased"):
        return sequence._blocked(step, message_id, reason, channel="sms", counted=None)
    reason = reason or ineligible(contact)
    if reason is None:
        zone = sendtime.zone(contact.timezone, spec.timezone)
        if sendtime.quiet_until(spec.quiet_hours, zone, clock.now()) is not None:
            raise QuietHours(f"{step['funnel']}: quiet hours {spec.quiet_hours[0]}-{spec.quiet_hours[1]}")
    message = Message(cid, f"MSG#{message_id}", message_id=message_id, channel="sms", funnel=step.get("funnel"),
                      step=step["state"], template=template, created_at=clock.iso(), variant=step.get("variant"),
                      status="blocked" if reason else "sending", reason=reason, list_name=list_name)
    if reason is None:
        body = render(template, sequence.template_context(contact, message_id, step.get("lead_magnet")),
                      step.get("version"))
        message.lease_until = clock.now() + sequence.LEASE_SECONDS * clock.speed()
    prior = sequence._claim(message)
    if prior is not None:
        if prior.status == "blocked":
            return sequence._blocked(step, message_id, prior.reason, prior.detail, channel="sms",
                                     counted=False) | {"duplicate": True}
        if prior.status == "sent":
            return sequence._sent(step, message_id, channel="sms", counted=False) | {"duplicate": True}
        raise TransientError("another attempt of this SMS holds its claim")
    if reason:
        return sequence._blocked(step, message_id, reason, channel="sms")
    block = [Message.status.set("blocked"), Message.lease_until.remove()]
    try:
        if cap.take(cid, message_id, spec.frequency_cap, contact.marketing_log) is not None:
            message.update(actions=[*block, Message.reason.set("frequency_cap")])
            return sequence._blocked(step, message_id, "frequency_cap", channel="sms")
        context = {"message_id": message_id, "contact_id": cid, "funnel": step.get("funnel"), "step": step["state"],
                   "template": template, "variant": step.get("variant")}
        sms_id = send_text(contact.phone, body, message_type="PROMOTIONAL", context=context)
    except OptedOut:
        _opted_out(cid)
        message.update(actions=[*block, Message.reason.set("sms_opted_out")])
        return sequence._blocked(step, message_id, "sms_opted_out", channel="sms")
    except Exception:
        sequence._release(message)
        raise
    sequence._mark_sent(message, sms_id, Message.sms_message_id)
    return sequence._sent(step, message_id, channel="sms")


def send_alert(to: str, text: str, key: str) -> str | None:
    """A sales alert to the business's own phone (infra/alerts.yaml ``sms``): transactional, one segment;
    None with SMS off."""
    if not config().sms_origination:
        return None
    if len(text) > SEGMENT["GSM-7"][0]:
        text = text[:SEGMENT["GSM-7"][0] - 1] + "…"
    return send_text(to, text, message_type="TRANSACTIONAL", context={"alert": key})


# ---------------------------------------------------------------- delivery events
def feedback(records: list[dict]) -> list[str]:
    """SNS records of the configuration set's event destination: a final delivery status is marked on
    the message (``delivered_at``, or ``detail`` = the failure's event type) and counted on its step
    (``sms_delivered`` / ``sms_failed``, once per message: the event's own id is the key)."""
    done = []
    for record in records:
        event = json.loads(record["Sns"]["Message"])
        kind = event.get("eventType")
        context = event.get("context") or {}
        if kind not in DELIVERED | FAILED or not context.get("message_id"):
            done.append(f"ignored {kind}")
            continue
        cid, mid = context["contact_id"], context["message_id"]
        at = clock.iso(float(event.get("eventTimestamp", clock.now() * 1000)) / 1000)
        delivered = kind in DELIVERED
        update, values = ("SET delivered_at = if_not_exists(delivered_at, :at)", {":at": {"S": at}}) if delivered \
            else ("SET detail = :kind", {":kind": {"S": kind}})
        aws.conditional("update_item", Key={"pk": {"S": cid}, "sk": {"S": f"MSG#{mid}"}}, UpdateExpression=update,
                        ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues=values)
        name = "sms.delivered" if delivered else "sms.failed"
        metrics.record(name, {"event_id": tokens.digest_id("sf", event.get("messageId", mid), kind), "contact_id": cid,
                              "occurred_at": at, "message_id": mid, **{k: context.get(k) for k in
                                                                        ("funnel", "step", "template", "variant")}})
        done.append(name)
    return done

"""What each funnel step does when its Task state calls functions/sequence_step.

Every action is idempotent on (execution, state): the message id is derived from them
and claimed with a conditional write, so a retried or duplicated step never sends twice.
"""
import json

from botocore.exceptions import ClientError
from pynamodb.exceptions import DoesNotExist, PutError

from funnelpilot import bus, clock, emails, tokens
from funnelpilot.config import config
from funnelpilot.errors import TransientError
from funnelpilot.models import PROFILE, Contact, Message, is_conditional_failure

_THROTTLES = {"Throttling", "ThrottlingException", "ServiceUnavailable", "TooManyRequestsException"}


def blocked_reason(contact: Contact | None, step: dict) -> str | None:
    """Why this send must not happen, or None. Checked before every send."""
    if contact is None:
        return "unknown_contact"
    if contact.status in ("unsubscribed", "suppressed", "erased"):
        return contact.status
    if contact.status == "pending" and not step.get("transactional"):
        return "unconfirmed"
    return None


def template_context(contact: Contact, message_id: str) -> dict:
    unsubscribe = f"{config().public_url}/u/{tokens.sign('u', contact.pk, message_id)}"
    return {
        "first_name": contact.first_name or "there",
        "contact_id": contact.pk,
        "properties": contact.properties.as_dict() if contact.properties else {},
        "unsubscribe_url": unsubscribe,
        "public_url": config().public_url,
        "site_url": config().site_url,
    }


def send(step: dict) -> dict:
    cid = step["contact_id"]
    message_id = tokens.digest_id("m", step["execution"], step["state"])
    try:
        contact = Contact.get(cid, PROFILE)
    except DoesNotExist:
        contact = None
    reason = blocked_reason(contact, step)
    now = clock.iso()
    message = Message(cid, f"MSG#{message_id}", message_id=message_id, funnel=step.get("funnel"),
                      step=step["state"], template=step["template"], created_at=now,
                      status="blocked" if reason else "sending", reason=reason)
    try:
        message.save(condition=Message.pk.does_not_exist())
    except PutError as exc:
        if not is_conditional_failure(exc):
            raise
        prior = Message.get(cid, f"MSG#{message_id}")
        return {"message_id": message_id, "status": prior.status, "reason": prior.reason, "duplicate": True}
    if reason:
        return {"message_id": message_id, "status": "blocked", "reason": reason}

    context = template_context(contact, message_id)
    rendered, links = emails.track(emails.render(step["template"], context), contact_id=cid, message_id=message_id)
    headers = {"List-Unsubscribe": f"<{context['unsubscribe_url']}>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    raw = emails.build_mime(to=contact.email, rendered=rendered, message_id=message_id, headers=headers)
    try:
        ses_id = emails.send_raw(contact.email, raw)
    except ClientError as exc:
        message.delete()  # release the claim so the Retry can send
        if exc.response["Error"]["Code"] in _THROTTLES:
            raise TransientError(f"SES throttled: {exc.response['Error']['Code']}") from exc
        raise
    message.update(actions=[Message.status.set("sent"), Message.ses_message_id.set(ses_id),
                            Message.sent_at.set(clock.iso()), Message.links.set(json.dumps(links))])
    bus.publish(bus.event("email.sent", cid, message_id=message_id, funnel=step.get("funnel"),
                          step=step["state"], template=step["template"]))
    return {"message_id": message_id, "status": "sent"}


ACTIONS = {"send": send}


def run(step: dict) -> dict:
    """Dispatch one Task state's payload to its action."""
    try:
        action = ACTIONS[step["action"]]
    except KeyError:
        raise ValueError(f"unknown step action {step.get('action')!r}") from None
    return action(step)

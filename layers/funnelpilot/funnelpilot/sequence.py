"""What each funnel step does when its Task state calls functions/sequence_step.

The payloads are the compiler's (``action, funnel, contact_id, execution, state`` plus the
action's parameters; README "Funnels"). Every action is idempotent on (execution, state):
ids and event ids are derived from them, writes are conditional, so a retried or duplicated
Task never sends twice, adds points twice or emits a second distinct event.
``"complete": true`` on any Task marks the last state of a path: after the action the
contact's funnel entry is completed (``complete``); ``"wait": {...}`` on a Task (the compiler's,
when a computed Wait follows it) adds ``wait_seconds`` to its result (``wait_seconds``);
``"wait_for": {...}`` on a send waits after the send (``wait_for``).
"""
import hashlib
import json
import logging
import random
from decimal import Decimal
from time import sleep

from boto3.dynamodb.types import TypeSerializer
from pynamodb.exceptions import DoesNotExist, PutError, UpdateError

from funnelpilot import (aws, bus, clock, consent, engagement, funnel_spec, funnels, metrics, preferences, scoring,
                         segments, tokens)
from funnelpilot.audience import fields as custom_fields
from funnelpilot.channels import emails, sms
from funnelpilot.config import config
from funnelpilot.errors import (FrequencyCapped, FunnelLeft, No, QuietHours, RecipientRejected, TemplateError,
                                TransientError, Yes, transient)
from funnelpilot.models import PROFILE, Contact, Message, is_conditional_failure
from funnelpilot.sending import cap, pace, sendtime
from funnelpilot.sending.checks import blocked_reason
from funnelpilot.steering import abtest, utm

logger = logging.getLogger(__name__)
LEAVES = ("unknown_contact", "erased", "unsubscribed", "suppressed", "sunset", "goal_reached",
          "list_unsubscribed")  # blocked: journey over
WAIT_GRACE = 86_400  # a wait item outlives its timeout by a day, then DynamoDB's TTL removes it
LEASE_SECONDS = 60  # real seconds a send attempt holds its claim (the function's timeout is 30 s)


def _step_id(step: dict, prefix: str = "s") -> str:
    """The (execution, state) idempotency key of a step: event ids, once keys; a part of a
    merged Task (``steps``) after the first adds its index."""
    part = (str(step["part"]),) if step.get("part") else ()
    return tokens.digest_id(prefix, step["execution"], step["state"], *part)


def _contact(cid: str) -> Contact | None:
    try:
        return Contact.get(cid, PROFILE, consistent_read=True)
    except DoesNotExist:
        return None


def _profile_key(cid: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": PROFILE}}


def _update(key: dict, expression: str, condition: str, values: dict, names: dict | None = None) -> bool:
    """One conditional UpdateItem; False when the condition was false."""
    extra = {"ExpressionAttributeNames": names} if names else {}
    return aws.conditional("update_item", Key=key, UpdateExpression=expression, ConditionExpression=condition,
                           ExpressionAttributeValues=values, **extra)


# ---------------------------------------------------------------- send
def template_context(contact: Contact, message_id: str, lead_magnet: str | None = None,
                     list_name: str | None = None) -> dict:
    """What an email (or SMS) template may use, ``emails.sender_context()`` included. ``first_name`` is the
    greeting's name ("there" without one: "Hi there,"); ``contact.first_name`` is None without one,
    for a template that words it otherwise. ``lead_magnet``: the one the journey's trigger asked
    for (execution input), else the contact's only one. ``list_title``: the list the email
    belongs to, for the footer's reason (None: no list)."""
    unsubscribe = f"{config().public_url}/u/{tokens.sign('u', contact.pk, message_id)}"
    magnets = sorted(contact.lead_magnets or ())
    return {
        **emails.sender_context(),  # also what an SMS (channels.sms) may use: site_url, from_name...
        "first_name": contact.first_name or "there",
        "contact": {"first_name": contact.first_name or None},
        "lead_magnet": lead_magnet or (magnets[0] if len(magnets) == 1 else None),
        "contact_id": contact.pk,
        "properties": contact.properties.as_dict() if contact.properties else {},
        "fields": custom_fields.template_values(contact.properties.as_dict() if contact.properties else {}),
        "unsubscribe_url": unsubscribe,
        "list_title": preferences.title(list_name) if list_name else None,
    }


def _email_fields(step: dict, message_id: str) -> dict:
    fields = {"message_id": message_id, "funnel": step.get("funnel"), "step": step["state"],
              "template": step["template"]}
    if step.get("variant"):
        fields["variant"] = step["variant"]
    return fields


def _blocked(step: dict, message_id: str, reason: str, detail: str | None = None, channel: str = "email",
             counted: bool | None = True) -> dict:
    """Emit ``email.blocked`` (``sms.blocked``; same event id on a retry) and end the journey if the reason says so.
    ``counted``: this attempt's write made the message blocked, so it is counted here (``_count``); False: a
    retry found it so; None: no item may be written (an unknown or erased contact), the metrics function
    counts it. An event whose message item holds it says ``counted``: the metrics function's rule leaves it out."""
    extra = {"detail": detail} if detail else {}
    entry = bus.event(f"{channel}.blocked", step["contact_id"], event_id=tokens.digest_id("eb", message_id),
                      reason=reason, **extra, **_email_fields(step, message_id),
                      **({} if counted is None else {"counted": True}))
    ended = bool(counted) and _count(step, entry, ends=reason not in LEAVES)
    bus.publish(entry)
    if reason in LEAVES:
        raise FunnelLeft(reason)
    return {"message_id": message_id, "status": "blocked", "reason": reason, **extra,
            **({"completed": True} if ended else {})}


def _sent(step: dict, message_id: str, channel: str = "email", counted: bool = True) -> dict:
    """Count the send (``_count``: guarded by the write that marked the message sent; ``counted`` False for
    a retry that found it so) and emit ``email.sent`` (``sms.sent``; same event id on a retry)."""
    entry = bus.event(f"{channel}.sent", step["contact_id"], event_id=tokens.digest_id("es", message_id),
                      **_email_fields(step, message_id))
    ended = counted and _count(step, entry)
    bus.publish(entry)
    return {"message_id": message_id, "status": "sent", **({"completed": True} if ended else {})}


def _count(step: dict, entry: dict, ends: bool = True) -> bool:
    """Count a send's event once (funnelpilot.metrics.counted). When the send is the last state of its path
    (``complete``, no ``wait_for``), the journey ends first and its end rides on the same ADD (``completed``
    on the step's row, not a second UpdateItem on the funnel's); True then, and ``_run`` completes nothing more
    (a retry finding the entry completed already counts nothing). The count is made even when ending fails."""
    ended = False
    try:
        ended = ends and bool(step.get("complete")) and not step.get("wait_for") and funnels.set_status(
            step["contact_id"], step["funnel"], step["execution"], "completed", completed_at=clock.iso())
    finally:
        metrics.counted(entry, also={"completed": 1} if ended else None)
    return ended


def _free():
    """A claim no live attempt holds: released, or its lease ran out."""
    return (Message.status == "sending") & (Message.lease_until.does_not_exist() | (Message.lease_until < clock.now()))


def _claim(message: Message) -> Message | None:
    """Write the message item unless another attempt of this step holds it: it is new, a failed
    attempt released it (or its lease ran out), or it could not be rendered (``failed``: a retry
    after the fix sends); a ``deferred`` one (frequency cap) is claimed with its ``deferred_at``
    kept. None when claimed, else the item."""
    try:
        message.save(condition=Message.pk.does_not_exist() | _free() | (Message.status == "failed"))
        return None
    except PutError as exc:
        if not is_conditional_failure(exc):
            raise
    prior = Message.get(message.pk, message.sk, consistent_read=True)
    if prior.status != "deferred":
        return prior
    message.deferred_at = prior.deferred_at
    try:
        message.save(condition=Message.status == "deferred")
        return None
    except PutError as exc:
        if not is_conditional_failure(exc):
            raise
    return Message.get(message.pk, message.sk, consistent_read=True)


def _defer(step: dict, message: Message, free_at: float) -> None:
    """A capped email waits for the contact's next free slot (``free_at``), up to the funnel's
    ``defer_up_to_hours`` since its first deferral (``deferred_at``, kept across retries): its
    claim becomes ``deferred`` and ``FrequencyCapped`` takes the state machine's wait; the first
    deferral is counted (``deferred_frequency_cap``). Past the limit, nothing is written: the send blocks it."""
    now = clock.now()
    first = message.deferred_at is None
    message.update(actions=[Message.status.set("deferred"), Message.deferred_at.set(message.deferred_at or now),
                            Message.lease_until.remove()], condition=Message.status == "sending")
    if first:  # the claim's status change is the counted-once guard (funnelpilot.metrics.count)
        metrics.count(step["funnel"], step["state"], {"deferred": 1, "deferred_frequency_cap": 1},
                      template=step["template"], variant=step.get("variant"))
    raise FrequencyCapped(f"frequency cap: the contact's next free slot in {int(free_at - now)} s")


def _release(message: Message) -> None:
    """A failed attempt lets the Retry's next attempt claim at once (else the lease runs out)."""
    try:
        message.update(actions=[Message.lease_until.set(0)], condition=Message.status == "sending")
    except Exception:  # noqa: BLE001 - best effort: the attempt is failing already, the lease expires anyway
        pass


def _render_failed(message: Message, exc: TemplateError) -> None:
    """The template cannot be rendered: a claim an earlier attempt left (released, or its lease ran
    out) becomes ``failed`` with the reason, so no item stays ``sending``; nothing is written when
    there is none (the claim comes after the render)."""
    try:
        message.update(actions=[Message.status.set("failed"), Message.reason.set("template_error"),
                                Message.detail.set(str(exc)), Message.links.remove(), Message.lease_until.remove()],
                       condition=_free())
    except UpdateError as error:
        if not is_conditional_failure(error):
            raise


def compose(contact: Contact, template: str, message_id: str, *, version: str | None = None,
            lead_magnet: str | None = None, list_name: str | None = None, funnel: str | None = None,
            tracked: bool = True, utm_tags: dict | None = None, sources: tuple | None = None,
            broadcast: str | None = None) -> tuple[list, bytes]:
    """The email of a send as SES gets it: rendered for the contact (the template's content
    ``version``, else the live files; ``sources``: a broadcast's, see ``emails.render``), its links
    tracked (not for a test send: ``tracked``; site links with ``utm_tags``), with its headers
    (List-Id: the email's list, else its ``funnel``'s; SES tags: ``funnel`` or ``broadcast``);
    returns (links for the message item, raw MIME). ``TemplateError`` when it cannot render."""
    context = template_context(contact, message_id, lead_magnet, list_name)
    rendered, links = emails.render(template, context, version, sources=sources), []
    if tracked:
        rendered, links = emails.track(rendered, contact_id=contact.pk, message_id=message_id, utm_tags=utm_tags)
    headers = {"List-Unsubscribe": f"<{context['unsubscribe_url']}>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}  # of this list, when it belongs to one
    if list_name or funnel:
        headers["List-Id"] = preferences.list_id(list_name) if list_name else preferences.funnel_list_id(funnel)
    return links, emails.build_mime(to=contact.email, rendered=rendered, message_id=message_id, headers=headers,
                                    email=template, funnel=funnel, broadcast=broadcast)


def _mark_sent(message: Message, ses_id: str, id_attribute=Message.ses_message_id) -> None:
    """SES (or the SMS service: ``id_attribute``) accepted the message: mark it sent. The one write whose loss
    would make a retry send again, so it is retried here too (transient errors, full jitter) before giving up."""
    actions = [Message.status.set("sent"), id_attribute.set(ses_id), Message.sent_at.set(clock.iso()),
               Message.lease_until.remove()]
    for attempt in range(4):
        try:
            message.update(actions=actions, condition=Message.pk.exists())
            return
        except UpdateError as exc:
            if is_conditional_failure(exc):
                return  # erased while sending: nothing to mark
            if attempt == 3 or transient(exc) is None:
                raise
        sleep(random.uniform(0, 0.05 * 2 ** attempt))


def send(step: dict) -> dict:
    """Send one email, after the checks in this order: unknown/erased, unsubscribed/suppressed,
    goal reached (FunnelLeft), unconfirmed, quiet hours (QuietHours, before any write),
    the message claim, the frequency cap (a capped email is deferred: ``_defer``; past the funnel's
    limit it is blocked), the rate gate (``SendRateExceeded``: retried). Then SES; a rejected recipient is a block
    (``recipient_rejected``, the journey goes on), anything else SES answers is raised. A template
    that cannot be rendered raises ``TemplateError`` (the journey ends in "Record failure").

    Idempotent on (execution, state), and nothing is lost between the writes: the claim
    already stores the links a click needs; a send is marked ``sent`` only after SES accepted
    it, then ``email.sent`` is published. A retry that finds the message sent or blocked
    publishes its event again (same event id); one that finds it claimed by a live attempt
    raises ``TransientError`` (retried later); a failed attempt releases its claim, so the
    retry sends (at least once: SES has no idempotency key, an attempt that died between
    SES's answer and the update leaves the next one to send again)."""
    cid, template = step["contact_id"], step["template"]
    transactional = bool(step.get("transactional"))
    message_id = tokens.digest_id("m", step["execution"], step["state"])
    contact = _contact(cid)
    current = funnels.entry(cid, step["funnel"]) if contact is not None else None
    mine = current and current.get("execution_arn") in (None, step["execution"])
    spec = funnel_spec.load(step["funnel"])
    # the list the email belongs to: the funnel's own, else the one its trigger named (the entry's)
    list_name = spec.list_name or (current.get("list_name") if mine else None)
    reason = blocked_reason(contact, step, current.get("status") if mine else None, list_name)
    if reason in ("unknown_contact", "erased"):
        return _blocked(step, message_id, reason, counted=None)  # no item: nothing may be stored about them again
    if reason is None and not transactional:
        zone = sendtime.zone(contact.timezone, spec.timezone)
        if sendtime.quiet_until(spec.quiet_hours, zone, clock.now()) is not None:
            raise QuietHours(f"{step['funnel']}: quiet hours {spec.quiet_hours[0]}-{spec.quiet_hours[1]}")
    message = Message(cid, f"MSG#{message_id}", message_id=message_id, funnel=step.get("funnel"),
                      step=step["state"], template=template, created_at=clock.iso(), variant=step.get("variant"),
                      status="blocked" if reason else "sending", reason=reason, list_name=list_name)
    priority = pace.TRANSACTIONAL if transactional else pace.FUNNEL
    # the rate gate before the render and the claim, so that a send refused in a full second costs
    # a few reads and no write of its own; a capped one (as the log read says) takes its slot after the cap
    gated = reason is None and (transactional or cap.free_at(contact.marketing_log, spec.frequency_cap, message_id,
                                                             clock.now()) is None)
    if gated:
        pace.take(priority)
    if reason is None:
        try:
            links, raw = compose(contact, template, message_id, version=step.get("version"),
                                 lead_magnet=step.get("lead_magnet"), list_name=list_name, funnel=step["funnel"],
                                 utm_tags=utm.tags(spec, template))
        except TemplateError as exc:
            _render_failed(message, exc)
            raise
        message.links = json.dumps(links)
        message.lease_until = clock.now() + LEASE_SECONDS * clock.speed()
    prior = _claim(message)
    if prior is not None:
        if prior.status == "blocked":
            return _blocked(step, message_id, prior.reason, prior.detail, counted=False) | {"duplicate": True}
        if prior.status == "sent":
            return _sent(step, message_id, counted=False) | {"duplicate": True}
        raise TransientError("another attempt of this send holds its claim")
    if reason:
        return _blocked(step, message_id, reason)
    block = [Message.status.set("blocked"), Message.links.remove(), Message.lease_until.remove()]
    try:
        free_at = None if transactional else cap.take(cid, message_id, spec.frequency_cap, contact.marketing_log)
        if free_at is not None and free_at - (message.deferred_at or clock.now()) <= spec.defer_up_to * 3600:
            _defer(step, message, free_at)
        if free_at is not None:
            message.update(actions=[*block, Message.reason.set("frequency_cap")])
            return _blocked(step, message_id, "frequency_cap")
        ses_id = emails.send_raw(contact.email, raw, priority=None if gated else priority)
    except RecipientRejected as exc:
        message.update(actions=[*block, Message.reason.set("recipient_rejected"), Message.detail.set(exc.message)])
        return _blocked(step, message_id, "recipient_rejected", exc.message)
    except FrequencyCapped:
        raise
    except Exception:
        _release(message)
        raise
    _mark_sent(message, ses_id)
    return _sent(step, message_id)


# ---------------------------------------------------------------- conditions
def _messages(cid: str, execution: str, states: list[str]) -> list[dict]:
    """The Message items the send states of this execution wrote (GetItem each)."""
    found = []
    for state in states:
        key = {"pk": {"S": cid}, "sk": {"S": f"MSG#{tokens.digest_id('m', execution, state)}"}}
        item = aws.dynamodb().get_item(TableName=config().table, Key=key, ConsistentRead=True).get("Item")
        if item:
            found.append(item)
    return found


def _human_click(item: dict, link: str | None) -> bool:
    """A human click on the message (on any link, or on one whose URL contains ``link``)."""
    urls = [e if isinstance(e, str) else e["url"] for e in json.loads(item.get("links", {}).get("S") or "[]")]
    for h in engagement.message_verdicts(item):
        index = h["link"] or ""
        if h["kind"] != "click" or not h["human"] or not index.isdigit() or int(index) >= len(urls):
            continue
        if not link or link in urls[int(index)]:
            return True
    return False


def holds(condition: dict, step: dict) -> bool:
    """Evaluate one ``if`` condition for the step's contact (README "Funnels")."""
    (kind, arg), = condition.items()
    cid = step["contact_id"]
    if kind == "clicked":
        return any(_human_click(m, arg.get("link")) for m in _messages(cid, step["execution"], arg["states"]))
    if kind == "opened":
        return any("first_open_at" in m or any(h["human"] for h in engagement.message_verdicts(m))  # a click opens too
                   for m in _messages(cid, step["execution"], arg["states"]))
    contact = _contact(cid)
    if contact is None or contact.status == "erased":
        return False
    if kind == "segment":
        return arg in (contact.segments or set())
    return segments.holds(kind, arg, segments.Facts(contact), clock.now())


def check(step: dict) -> dict:
    """The answer for a Choice after it: how executions started before ``if`` became one Task (if_) go on."""
    return {"result": holds(step["condition"], step)}


def if_(step: dict) -> dict:
    """An ``if`` step's Task (compiler._Machine._if): its answer, then the instant steps folded into
    that answer (``yes``/``no``: ``steps``, and ``close`` when they end the journey: the entry is
    closed first, recording the answer, so that a retry after a failure takes the same one), then
    ``Yes``/``No`` raised when the state machine takes that answer by a Catch (``raise``)."""
    answer = "yes" if holds(step["condition"], step) else "no"
    other = step.get("no" if answer == "yes" else "yes") or {}
    if "close" in other:  # an earlier attempt may have closed the journey on the other answer
        current = funnels.entry(step["contact_id"], step["funnel"]) or {}
        if current.get("execution_arn") == step["execution"] and current.get("answer") in ("yes", "no"):
            answer = current["answer"]
    fold = step.get(answer) or {}
    if "close" in fold and not _close(step, answer, fold["close"]):
        raise FunnelLeft("goal_reached")  # the goal came while the step was in flight (funnels.goal)
    base = {k: v for k, v in step.items() if k not in ("yes", "no", "raise", "condition", "wait")}
    for part, params in enumerate(fold.get("steps", [])):
        ACTIONS[params["action"]]({**base, **params, "part": part})
    if step.get("raise") == answer:
        raise (Yes if answer == "yes" else No)(step["state"])
    return {"status": answer}


def _close(step: dict, answer: str, close: dict) -> bool:
    """End the journey with ``close`` (its ``outcome``, and ``reason``), recording ``answer``, counted once
    (by the status change); True also when an earlier attempt made the change."""
    outcome = close["outcome"]
    fields = {"reason": close["reason"]} if close.get("reason") else {}
    if funnels.set_status(step["contact_id"], step["funnel"], step["execution"], outcome, completed_at=clock.iso(),
                          answer=answer, **fields):
        metrics.completed(step["funnel"])
        return True
    current = funnels.entry(step["contact_id"], step["funnel"]) or {}
    return current.get("execution_arn") == step["execution"] and current.get("status") == outcome


# ---------------------------------------------------------------- split
def pick_variant(variants: dict[str, float], contact_id: str, funnel: str, state: str) -> str:
    """Weighted, deterministic choice for one contact at one split (same inputs, same variant)."""
    names = sorted(variants)
    total = sum(float(variants[n]) for n in names)
    if total <= 0:
        return names[0]
    digest = hashlib.sha256("\x1f".join((contact_id, funnel, state)).encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    for name in names:
        point -= float(variants[name])
        if point < 0:
            return name
    return names[-1]


def split(step: dict) -> dict:
    """Pick the variant (the declared winner, if the split has one) and record it once on the funnel
    entry (``variants``: state -> variant); a repeat returns the recorded one, so a replay takes the same branch."""
    cid, funnel, state = step["contact_id"], step["funnel"], step["state"]
    # a split with a declared winner (funnelpilot.steering.abtest) sends every new entrant there
    pick = (step.get("winner") and abtest.current_winner(funnel, state)) or pick_variant(step["variants"], cid, funnel,
                                                                                          state)
    key = {"pk": {"S": cid}, "sk": {"S": f"FUNNEL#{funnel}"}}
    names = {"#v": "variants", "#f": "funnel"}
    aws.dynamodb().update_item(TableName=config().table, Key=key, ExpressionAttributeNames=names,
                               UpdateExpression="SET #v = if_not_exists(#v, :empty), #f = if_not_exists(#f, :f)",
                               ExpressionAttributeValues={":empty": {"M": {}}, ":f": {"S": funnel}})
    new = aws.dynamodb().update_item(TableName=config().table, Key=key, ReturnValues="ALL_NEW",
                                     UpdateExpression="SET #v.#s = if_not_exists(#v.#s, :pick)",
                                     ExpressionAttributeNames={"#v": "variants", "#s": state},
                                     ExpressionAttributeValues={":pick": {"S": pick}})["Attributes"]
    return {"variant": new["variants"]["M"][state]["S"]}


# ---------------------------------------------------------------- waits
def wait_for(step: dict) -> dict:
    """Wait for a click or an open: nothing is stored, its resumer reads the Task's token from the
    execution's history (funnels.resume); if it happened already (before the wait began), resume at once.
    Wait for an event (``event:``): store the token where the router finds it (pk = contact,
    sk = WAIT#...); a retry overwrites it with the retry's token."""
    cid, funnel = step["contact_id"], step["funnel"]
    detail_type, match = funnels.wait_spec(step["condition"], step["execution"])
    if "event" not in step["condition"]:
        if holds(step["condition"], step):
            funnels.succeed(step["token"], {"resumed_by": detail_type, "event_id": None})
        return {"status": "waiting"}
    item = {"pk": {"S": cid}, "sk": {"S": f"WAIT#{funnel}#{tokens.digest_id('w', step['execution'], step['state'])}"},
            "token": {"S": step["token"]}, "detail_type": {"S": detail_type}, "match": {"S": json.dumps(match)},
            "funnel": {"S": funnel}, "execution": {"S": step["execution"]},
            "expires_at": {"N": str(int(clock.now() + float(step.get("timeout_seconds") or 0) + WAIT_GRACE))}}
    aws.dynamodb().put_item(TableName=config().table, Item=item)
    return {"status": "waiting"}


def until(step: dict) -> dict:
    """A Task whose only job is the next Wait's duration (``wait``, see ``wait_seconds``): a
    ``wait: {until: ...}`` with no Task before it, and the quiet-hours and frequency-cap detours of a send."""
    return {}


def wait_seconds(step: dict) -> int:
    """Seconds of the Wait after this Task (``step["wait"]``, sendtime.wait_seconds); time zone:
    the contact's, else the funnel's, else UTC. ``wait: {"capped": true}`` (a capped email's
    wait, ``_defer``): until the contact's next free slot (funnelpilot.sending.cap), out of quiet hours."""
    wait, spec = step["wait"], funnel_spec.load(step["funnel"])
    capped = bool(wait.get("capped"))
    names = {"#z": "timezone", **({"#l": "marketing_log"} if capped else {})}
    item = aws.dynamodb().get_item(TableName=config().table, Key=_profile_key(step["contact_id"]),
                                   ProjectionExpression=", ".join(names), ExpressionAttributeNames=names,
                                   ConsistentRead=capped).get("Item") or {}
    if capped:
        log = [v["S"] for v in item.get("marketing_log", {}).get("L", [])]
        now = clock.now()
        wait = {"seconds": max(0.0, (cap.next_free(log, spec.frequency_cap, now) or now) - now), "quiet": True}
    return sendtime.wait_seconds(wait, spec, item.get("timezone", {}).get("S"), step["contact_id"])


# ---------------------------------------------------------------- contact changes
def _tags(step: dict, add: bool) -> dict:
    """ADD/DELETE one tag; the event only when the tag set changed (conditional write)."""
    cid, tag = step["contact_id"], step["tag"]
    changed = _update(_profile_key(step["contact_id"]),
                      f"{'ADD' if add else 'DELETE'} tags :set SET updated_at = :now",
                      "attribute_exists(pk) AND #st <> :erased AND "
                      + ("NOT contains(tags, :tag)" if add else "contains(tags, :tag)"),
                      {":set": {"SS": [tag]}, ":tag": {"S": tag}, ":now": {"S": clock.iso()},
                       ":erased": {"S": "erased"}}, {"#st": "status"})
    if changed:
        bus.publish(bus.event("contact.tagged" if add else "contact.untagged", cid, event_id=_step_id(step, "tg"),
                              tag=tag, funnel=step["funnel"]))
    return {"status": "done"}


def tag(step: dict) -> dict:
    return _tags(step, add=True)


def untag(step: dict) -> dict:
    return _tags(step, add=False)


def set_properties(step: dict) -> dict:
    """properties.<name> = literal value (never rendered); ``contact.updated`` only on a change."""
    cid, props = step["contact_id"], step["properties"]
    serialise = TypeSerializer().serialize
    names, values, sets, differs = {"#p": "properties", "#st": "status"}, {}, [], []
    for i, (name, value) in enumerate(props.items()):
        names[f"#k{i}"] = name
        values[f":v{i}"] = serialise(json.loads(json.dumps(value), parse_float=Decimal))
        sets.append(f"#p.#k{i} = :v{i}")
        differs.append(f"attribute_not_exists(#p.#k{i}) OR #p.#k{i} <> :v{i}")
    live = "attribute_exists(pk) AND #st <> :erased"
    base = {":erased": {"S": "erased"}}
    _update(_profile_key(cid), "SET #p = if_not_exists(#p, :empty)", live, {**base, ":empty": {"M": {}}},
            {"#p": "properties", "#st": "status"})
    changed = _update(_profile_key(cid), "SET " + ", ".join(sets) + ", updated_at = :now",
                      f"{live} AND ({' OR '.join(differs)})",
                      {**values, **base, ":now": {"S": clock.iso()}}, names)
    if changed:
        bus.publish(bus.event("contact.updated", cid, event_id=_step_id(step, "cu"), fields=sorted(props),
                              funnel=step["funnel"]))
    return {"status": "done"}


def score(step: dict) -> dict:
    scoring.award(step["contact_id"], float(step["points"]), once_key=_step_id(step, "sa"),
                  track=step.get("track") or "capture", reason=f"funnel:{step['funnel']}")
    return {"status": "done"}


def suppress(step: dict) -> dict:
    """Never email this contact again."""
    consent.suppress(step["contact_id"], step.get("reason") or "funnel", event_id=_step_id(step, "sp"),
                     funnel=step["funnel"])
    return {"status": "done"}


def sunset(step: dict) -> dict:
    """Stop marketing to someone who stopped responding (consent.sunset), unless they engaged since
    this journey began (its entry's ``entered_ts``): a purchase or a visit meanwhile counts."""
    current = funnels.entry(step["contact_id"], step["funnel"]) or {}
    done = consent.sunset(step["contact_id"], step.get("reason") or "no response", event_id=_step_id(step, "ss"),
                          since=float(current.get("entered_ts") or 0), funnel=step["funnel"])
    return {"status": "sunset" if done else "kept"}


# ---------------------------------------------------------------- events for other parts
def notify(step: dict) -> dict:
    """Ask functions/notify for a sales alert (its rate limit applies)."""
    bus.publish(bus.event("sales.notify", step["contact_id"], event_id=_step_id(step, "sn"), reason=step["reason"],
                          funnel=step["funnel"], step=step["state"]))
    return {"status": "done"}


def webhook(step: dict) -> dict:
    """A delivery to a webhook subscription (funnelpilot.channels.webhooks): the subscription's fields
    (or fewer) and the step's ``data``; its id is the step's, so a retry is the same delivery."""
    from funnelpilot.channels import webhooks

    detail = {"event_id": _step_id(step, "wh"), "contact_id": step["contact_id"], "occurred_at": clock.iso(),
              "funnel": step["funnel"], "step": step["state"], **(step.get("data") or {})}
    return {"status": webhooks.deliver(step["webhook"], step.get("fields") or [], webhooks.STEP, detail,
                                       delivery_id=detail["event_id"])}


def goto(step: dict) -> dict:
    """Hand the contact to another funnel: its router rule enters them on ``funnel.handoff``."""
    bus.publish(bus.event("funnel.handoff", step["contact_id"], event_id=_step_id(step, "fh"), to=step["to"],
                          **{"from": step["funnel"]}))
    return {"status": "done"}


def steps(step: dict) -> dict:
    """Consecutive instant steps the compiler merged into one Task (``steps``: their actions and
    parameters, a goto or exit last), run in order; a retry runs them all again (each is idempotent)."""
    base = {k: v for k, v in step.items() if k not in ("steps", "complete", "wait")}
    for part, params in enumerate(step["steps"]):
        ACTIONS[params["action"]]({**base, **params, "part": part})
    return {"status": "done"}


# ---------------------------------------------------------------- the journey's end
def _end(step: dict, status: str) -> bool:
    """Move this execution's entry from starting/running to ``status`` (a converted, exited or
    replaced entry keeps its own). True if it changed, or had changed so on an earlier try."""
    cid, funnel, execution = step["contact_id"], step["funnel"], step["execution"]
    if funnels.set_status(cid, funnel, execution, status, completed_at=clock.iso()):
        return True
    current = funnels.entry(cid, funnel) or {}
    return current.get("execution_arn") == execution and current.get("status") == status


def complete(step: dict) -> dict:
    """The journey ends here: entry status ``outcome`` (and the step's ``reason``), counted once
    (by the status change: a retry finds it made)."""
    outcome = step.get("outcome") or "completed"
    fields = {"reason": step["reason"]} if step.get("reason") else {}
    if funnels.set_status(step["contact_id"], step["funnel"], step["execution"], outcome, completed_at=clock.iso(),
                          **fields):
        metrics.completed(step["funnel"])
    return {"status": "done"}


def fail(step: dict) -> dict:
    """A Catch landed here: record the failure and the state that failed (from the history), and log
    the error (a ``TemplateError`` with its message: the template file and line)."""
    error = step.get("error") or {}
    failed = next((s for s in funnels.recent_states(step["execution"]) if s != step["state"]), None)
    about = {"funnel": step["funnel"], "step": failed, "error": error.get("Error")}
    if error.get("Error") == TemplateError.__name__:  # names a file and a line, never data (other causes may)
        about["cause"] = _cause(error.get("Cause"))
    logger.error("funnel step failed", extra=about)
    if _end(step, "failed"):
        bus.publish(bus.event("funnel.failed", step["contact_id"], event_id=tokens.digest_id("ff", step["execution"]),
                              funnel=step["funnel"], step=failed, error=error.get("Error")))
    return {"status": "recorded"}


def _cause(cause: str | None) -> str | None:
    """The message of a caught Lambda error (its ``Cause`` is the JSON Lambda returned)."""
    try:
        return json.loads(cause).get("errorMessage") or cause
    except (TypeError, ValueError, AttributeError):
        return cause


ACTIONS = {"send": send, "sms": sms.send, "check": check, "if": if_, "split": split, "wait_for": wait_for, "until": until,
           "tag": tag, "untag": untag, "set": set_properties, "score": score, "notify": notify, "webhook": webhook,
           "goto": goto, "suppress": suppress, "sunset": sunset, "steps": steps, "complete": complete, "fail": fail}


def run(step: dict) -> dict:
    """Dispatch one Task state's payload to its action; then the completion if it is the
    last state on its path. FunnelLeft also marks the entry ``left``. An AWS failure that may
    pass (throttling, 5xx, network) is raised under the name the state machine's Retry
    matches (``errors.transient``); any other error ends in "Record failure"."""
    try:
        return _run(step)
    except Exception as exc:
        retry = transient(exc)
        if retry is None or retry is exc:
            raise
        raise retry from exc


def _run(step: dict) -> dict:
    try:
        action = ACTIONS[step["action"]]
    except KeyError:
        raise ValueError(f"unknown step action {step.get('action')!r}") from None
    try:
        result = action(step)
    except FunnelLeft:
        _end(step, "left")
        raise
    if step.get("wait_for"):  # a send and the wait_for after it, one Task (compiler._Machine._fuse)
        wait_for({**step, **step["wait_for"]})
    if step.get("wait"):
        result = {**result, "wait_seconds": wait_seconds(step)}
    if step.get("complete") and step["action"] != "complete" and not result.get("completed"):
        complete({**step, "outcome": "completed", "reason": None})
    return result

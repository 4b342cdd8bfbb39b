"""DynamoDB items (pynamodb). One table holds everything about a person under one
partition (``pk`` = contact_id), so export is a Query and erase is a Query plus
deletes/updates. The key table is documented in README.md ("Data model").
"""
from functools import cache

from pynamodb.attributes import (
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.connection import Connection
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from funnelpilot import aws
from funnelpilot.config import config

PROFILE = "PROFILE"


@cache
def connection() -> Connection:
    """For transactions spanning several item types."""
    return Connection(region=config().region)


is_conditional_failure = aws.is_conditional_failure  # for pynamodb writes too


class _Meta:
    table_name = config().table
    region = config().region


class ByGsi1(GlobalSecondaryIndex):
    """Generic inverted index: members of a segment, due items, etc. (sparse)."""

    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class Item(Model):
    """Base for every item type: pk/sk, the sparse GSI, and TTL."""

    Meta = _Meta
    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)
    by_gsi1 = ByGsi1()


class Contact(Item):
    """sk = PROFILE. status: active | pending | unsubscribed | suppressed | erased."""

    Meta = _Meta
    email = UnicodeAttribute(null=True)
    first_name = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default="active")
    status_reason = UnicodeAttribute(null=True)
    lists = UnicodeSetAttribute(default=set)
    unsubscribed_lists = UnicodeSetAttribute(default=set)  # opted out of (funnelpilot.preferences)
    tags = UnicodeSetAttribute(default=set)
    lead_magnets = UnicodeSetAttribute(default=set)
    properties = MapAttribute(default=dict)
    utm = MapAttribute(default=dict)
    timezone = UnicodeAttribute(null=True)
    # SMS (funnelpilot.channels.sms): an E.164 number, its own consent (never implied by the email's),
    # and the opt-out the SMS service reported for it (a STOP reply puts the number on its opt-out list)
    phone = UnicodeAttribute(null=True)
    sms_consent_at = UnicodeAttribute(null=True)
    sms_opted_out_at = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute(null=True)
    confirmed_at = UnicodeAttribute(null=True)  # double opt-in done
    email_proven_at = NumberAttribute(null=True)  # first human email click (funnelpilot.visitors: fp tokens)
    confirm_sent_at = UnicodeAttribute(null=True)  # last confirmation email (resend throttle)
    resubscribe_requested_at = UnicodeAttribute(null=True)  # a signup since the unsubscribe: awaits confirmation
    soft_bounces = NumberAttribute(null=True)  # since the last delivery
    erased_at = UnicodeAttribute(null=True)
    # Random, set when the profile is created: a signup after an erasure is a new person
    # (new execution and schedule names, a new welcome), though the contact id is the same.
    incarnation = UnicodeAttribute(null=True)
    # Scoring (funnelpilot.scoring): points expressed at the reference epoch ``score_at``;
    # read them through scoring.current_score(contact), never directly.
    score = NumberAttribute(null=True)
    loyalty = NumberAttribute(null=True)
    score_at = NumberAttribute(null=True)
    qualified_until = NumberAttribute(null=True)  # end of the current lead.qualified episode
    vip_until = NumberAttribute(null=True)  # end of the current customer.vip episode
    orders = NumberAttribute(null=True)
    spend = NumberAttribute(null=True)
    first_order_at = NumberAttribute(null=True)
    last_order_at = NumberAttribute(null=True)
    order_months = UnicodeSetAttribute(default=set)  # "01".."12": the season of past purchases
    segments = UnicodeSetAttribute(default=set)  # kept by funnelpilot.segments
    # "<epoch>#<message_id>" of recent marketing sends (frequency cap, funnelpilot.sequence)
    marketing_log = ListAttribute(of=UnicodeAttribute, null=True)

    @property
    def contact_id(self) -> str:
        return self.pk

    @property
    def can_receive_marketing(self) -> bool:
        return self.status == "active"


class ConsentRecord(Item):
    """sk = CONSENT#<iso time>#<list>: when, from which form and address consent was given.

    confirmation: ``unconfirmed`` (a signup awaiting the owner's click on the link),
    ``confirmed`` (the click: ``confirmed_at``, from ``ip``/``user_agent``), ``single_opt_in``,
    ``already_active``, ``resubscribed`` (a sunset person's signup on a single opt-in list),
    ``suppressed`` or ``erased`` (a signup that changed no status); for every list (``*``):
    ``withdrawn`` (unsubscribed), ``sunset`` and ``reactivated`` (funnelpilot.consent)."""

    Meta = _Meta
    list_name = UnicodeAttribute()
    source = UnicodeAttribute(null=True)
    ip = UnicodeAttribute(null=True)
    user_agent = UnicodeAttribute(null=True)
    given_at = UnicodeAttribute()
    confirmation = UnicodeAttribute(null=True)
    confirmed_at = UnicodeAttribute(null=True)
    wording_version = UnicodeAttribute(null=True)  # the consent wording the form showed (infra/fields.yaml)
    sms = UnicodeAttribute(null=True)  # "given": the form's SMS checkbox was ticked too (funnelpilot.channels.sms)


class FunnelEntry(Item):
    """sk = FUNNEL#<funnel id>: guards entry rules and points at the live execution
    (written by funnelpilot.funnels and .sequence with the low-level client).

    status: starting | running | completed | exited | converted | left | failed."""

    Meta = _Meta
    funnel = UnicodeAttribute()
    entries = NumberAttribute(default=0)
    execution_arn = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default="running")
    entered_at = UnicodeAttribute(null=True)
    entered_ts = NumberAttribute(null=True)  # epoch of the last entry (reenter_after)
    trigger_event_id = UnicodeAttribute(null=True)  # the event that started the current execution
    list_name = UnicodeAttribute(null=True)  # the list its trigger named: the journey's emails belong to it
    completed_at = UnicodeAttribute(null=True)
    goal = UnicodeAttribute(null=True)  # detail-type of the goal/exit event that ended it
    step = UnicodeAttribute(null=True)  # the state the contact was on when it converted / exited
    variants = MapAttribute(null=True)  # split state -> variant (A/B tests)


class Message(Item):
    """sk = MSG#<message id>: one email (or SMS, ``channel``) to one contact, with the links it carries."""

    Meta = _Meta
    message_id = UnicodeAttribute()
    channel = UnicodeAttribute(null=True)  # None: email; "sms" (funnelpilot.channels.sms)
    funnel = UnicodeAttribute(null=True)
    step = UnicodeAttribute(null=True)
    template = UnicodeAttribute()
    status = UnicodeAttribute()  # sending | sent | blocked | failed (its template could not be rendered) | deferred
    deferred_at = NumberAttribute(null=True)  # deferred (frequency cap): when the first deferral began
    variant = UnicodeAttribute(null=True)  # A/B variant of the split branch (or the broadcast's subject) that sent it
    broadcast = UnicodeAttribute(null=True)  # the broadcast it belongs to (funnelpilot.broadcasts; no funnel then)
    chunk = UnicodeAttribute(null=True)  # the broadcast chunk that claimed it (a redelivery knows its own)
    list_name = UnicodeAttribute(null=True)  # the list it belongs to: its unsubscribe link opts out of that one
    reason = UnicodeAttribute(null=True)
    detail = UnicodeAttribute(null=True)  # SES's words for a recipient_rejected block
    lease_until = NumberAttribute(null=True)  # sending: the attempt that claimed it owns it until then
    links = UnicodeAttribute(null=True)  # JSON list of URLs, indexed by click tokens
    ses_message_id = UnicodeAttribute(null=True)
    sms_message_id = UnicodeAttribute(null=True)  # the MessageId SendTextMessage answered
    created_at = UnicodeAttribute()
    sent_at = UnicodeAttribute(null=True)
    # Written by the tracking and SES feedback handlers (low-level client, see engagement.py).
    delivered_at = UnicodeAttribute(null=True)
    bounced_at = UnicodeAttribute(null=True)
    complained_at = UnicodeAttribute(null=True)
    hits = ListAttribute(null=True)  # of maps {at, kind, link, human, reason}; no IP, no user agent
    first_open_at = UnicodeAttribute(null=True)  # first human open (or human click)
    first_click_at = UnicodeAttribute(null=True)
    last_hit_at = UnicodeAttribute(null=True)
    honeypot_at = UnicodeAttribute(null=True)


class Marker(Item):
    """sk = SEEN#<what>#<id>: an external event already applied to this contact (expires by TTL)."""

    Meta = _Meta

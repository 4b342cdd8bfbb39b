"""Site and shop events (``POST /events``): schema validation, idempotency, publishing.

One event per request, identified by the caller's ``event_id``. The contact is named by
``contact_id`` (what ``POST /signup`` returned) or by ``email`` (a shop backend), which is
turned into the contact id and never leaves this function. Types:

- ``page.viewed``: ``path``, optional ``title``, ``referrer``;
- ``order.placed``: ``order_id``, ``amount``, ``currency``, ``items`` (sku, quantity, price);
- ``custom.<name>``: up to 20 scalar ``properties``. Only ``custom.*`` names are accepted so
  nobody can forge our own events (``email.clicked``...) from the outside.

Idempotent on (contact, event_id): a marker item ``INGEST#<event_id>`` under the contact
(conditional put, TTL) is written before publishing and released if publishing fails.
"""
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pynamodb.exceptions import DeleteError, DoesNotExist, PutError

from funnelpilot import bus, clock, contacts, tokens
from funnelpilot.errors import InvalidField
from funnelpilot.models import PROFILE, Contact, Marker, is_conditional_failure

MARKER_TTL = 14 * 86400
_ID = r"^[A-Za-z0-9_-]{8,64}$"
Text = Annotated[str, Field(min_length=1, max_length=300)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    event_id: str = Field(pattern=_ID)
    contact_id: str | None = Field(default=None, pattern=r"^[a-z2-7]{26}$")
    email: str | None = Field(default=None, max_length=254)


class PageViewed(_Event):
    type: Literal["page.viewed"]
    path: str = Field(pattern=r"^/", max_length=2000)
    title: Text | None = None
    referrer: str | None = Field(default=None, max_length=2000)


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Text
    name: Text | None = None
    quantity: int = Field(ge=1, le=10_000)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class OrderPlaced(_Event):
    type: Literal["order.placed"]
    order_id: Text
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    items: list[OrderItem] = Field(default_factory=list, max_length=100)


class Custom(_Event):
    type: str = Field(pattern=r"^custom\.[a-z0-9][a-z0-9_.-]{0,63}$")
    properties: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")],
                     str | int | float | bool | None] = Field(default_factory=dict, max_length=20)


def parse(body: dict) -> PageViewed | OrderPlaced | Custom:
    """A validated event, or InvalidField naming the first bad field."""
    if not isinstance(body.get("type"), str):
        raise InvalidField("type", "type is required: page.viewed, order.placed or custom.<name>")
    model = {"page.viewed": PageViewed, "order.placed": OrderPlaced}.get(body["type"], Custom)
    try:
        event = TypeAdapter(model).validate_python(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidField(field, f"{field}: {err['msg']}") from None
    if (event.contact_id is None) == (event.email is None):
        raise InvalidField("contact_id", "give exactly one of contact_id or email")
    return event


def _fields(event) -> dict:
    data = event.model_dump(mode="json", exclude={"event_id", "contact_id", "email", "type"}, exclude_none=True)
    if isinstance(event, OrderPlaced):  # amounts as numbers on the bus
        data["amount"] = float(event.amount)
        data["items"] = [{**i, "price": float(i["price"])} for i in data["items"]]
    return data


def accept(event) -> tuple[str, str]:
    """Publish the event once; returns (status, contact_id): accepted | duplicate | unknown_contact."""
    cid = event.contact_id or tokens.contact_id(contacts.normalise_email(event.email))
    try:
        Contact.get(cid, PROFILE, attributes_to_get=["pk"])
    except DoesNotExist:
        return "unknown_contact", cid
    marker = Marker(cid, f"INGEST#{event.event_id}", expires_at=int(clock.now()) + MARKER_TTL)
    try:
        marker.save(condition=Marker.pk.does_not_exist())
    except PutError as exc:
        if is_conditional_failure(exc):
            return "duplicate", cid
        raise
    try:
        bus.publish(bus.event(event.type, cid, event_id=f"{cid}-{event.event_id}", **_fields(event)))
    except Exception:
        try:
            marker.delete()  # let the caller's retry publish it
        except DeleteError:
            pass
        raise
    return "accepted", cid

"""What every writer of a contact's items relies on so that an erasure is final.

``gdpr.erase`` deletes the profile *first*, then Queries and deletes everything else under
the contact's key. So a writer that can create items for a contact (an event still in
flight when the person was erased) either checks the profile in the same transaction as
its write (``alive``: the write fails once the profile is gone), or writes and then reads
the profile (``incarnation``) and undoes its write when it is gone: a write that committed
before the profile's deletion is found by the erasure's Query; one after it sees no profile.

The incarnation is a random value set when a profile is created: a signup after an
erasure has the same contact id but another incarnation, so its execution and schedule
names differ from the erased person's (funnels.execution_name, loyalty.repurchase.schedule_name).
"""
from funnelpilot import aws
from funnelpilot.config import config

PROFILE_KEY = "PROFILE"


def _key(cid: str) -> dict:
    return {"pk": {"S": cid}, "sk": {"S": PROFILE_KEY}}


def incarnation(cid: str) -> str | None:
    """The profile's incarnation ("" for a profile created before incarnations existed),
    or None when there is no live profile (erased, or never subscribed). A consistent read."""
    profile = live(cid)
    return None if profile is None else profile["incarnation"]


def live(cid: str, *fields: str) -> dict | None:
    """``incarnation``, ``status`` and ``fields`` (plain values, absent when unset) of the live profile,
    or None when there is none (erased, or never subscribed). A consistent read."""
    names = {"#s": "status", **{f"#f{i}": f for i, f in enumerate(fields)}}
    item = aws.dynamodb().get_item(TableName=config().table, Key=_key(cid), ConsistentRead=True,
                                   ProjectionExpression=", ".join(["incarnation", *names]),
                                   ExpressionAttributeNames=names).get("Item")
    if item is None or item.get("status", {}).get("S") == "erased":
        return None
    return {"incarnation": "", **{k: next(iter(v.values())) for k, v in item.items()}}


def alive(cid: str, incarnation_: str | None = None) -> dict:
    """A TransactWriteItems ``ConditionCheck``: the profile exists, is not erased and (when
    given) is still that incarnation."""
    condition, values = "attribute_exists(pk) AND #s <> :erased", {":erased": {"S": "erased"}}
    if incarnation_:
        condition += " AND incarnation = :inc"
        values[":inc"] = {"S": incarnation_}
    elif incarnation_ == "":
        condition += " AND attribute_not_exists(incarnation)"
    return {"ConditionCheck": {"TableName": config().table, "Key": _key(cid), "ConditionExpression": condition,
                               "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": values}}

"""EventBridge → lead and loyalty scoring for one contact (rules: infra/scoring.yaml), then the
contact's segments that depend on the event or on the score (infra/segments.yaml; functions/segment
takes the events nothing scores); human engagement also moves the contact's inactivity bucket; an
order (re)schedules repurchase_due and lapsed, and ends a sunset."""
from aws_lambda_powertools import Logger

from funnelpilot import consent, inactivity, scoring, segments
from funnelpilot.loyalty import repurchase
from funnelpilot.models import PROFILE, Contact

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    detail_type, detail = event["detail-type"], event["detail"]
    # touch, then score: scoring reads the profile after the touch, so an erased contact's
    # ACTIVITY is either found by the erasure or undone here (funnelpilot.erasure)
    engaged = (detail_type in inactivity.ENGAGEMENT and not detail.get("unverified")
               and inactivity.touch(detail["contact_id"], scoring.event_time(detail)))
    outcome = scoring.record(detail_type, detail)
    if engaged and outcome.status == "unknown_contact":
        inactivity.forget(detail["contact_id"])
    changes = segments.evaluate(detail_type, detail, also=(segments.SCORED,) if any(outcome.points.values()) else ())
    if detail_type == "order.placed" and outcome.status != "unknown_contact":
        # also on a duplicate: a retry after a failed schedule call must still schedule
        try:
            contact = Contact.get(detail["contact_id"], PROFILE, consistent_read=True)
        except Contact.DoesNotExist:
            contact = None  # erased since it was scored: no reminder
        if contact is not None:
            repurchase.schedule(contact)
            if contact.status == "sunset":  # a purchase ends a sunset (funnelpilot.consent)
                consent.reactivate(contact.pk, "order.placed", event_id=f"{detail['event_id']}-reactivated")
    logger.info("scored", extra={"contact_id": detail.get("contact_id"), "status": outcome.status,
                                 "rules": outcome.rules, "crossed": outcome.crossed, **changes})
    return {"status": outcome.status, "points": outcome.points, "crossed": outcome.crossed, **changes}

"""Who may get a marketing message now: the checks shared by every send (funnelpilot.sequence for a
funnel step, channels.sms, broadcasts.worker)."""
from funnelpilot.models import Contact


def blocked_reason(contact: Contact | None, step: dict, entry_status: str | None = None,
                   list_name: str | None = None) -> str | None:
    """Why this send must not happen, or None: the checks every marketing send makes (a funnel step's
    email or SMS, a broadcast's), in this order. ``step``: its ``transactional`` flag (a lead magnet
    still goes to a pending or sunset contact); ``entry_status``: the funnel entry's (a goal reached
    while the step was in flight); ``list_name``: the list the email belongs to, which the contact may
    have opted out of (funnelpilot.preferences)."""
    if contact is None:
        return "unknown_contact"
    if contact.status in ("unsubscribed", "suppressed", "erased"):
        return contact.status
    if list_name and list_name in (contact.unsubscribed_lists or ()):
        return "list_unsubscribed"
    if entry_status in ("converted", "exited"):
        return "goal_reached"  # the goal came while this step was in flight
    if contact.status == "pending" and not step.get("transactional"):
        return "unconfirmed"
    if contact.status == "sunset" and not step.get("transactional"):
        return "sunset"  # marketing stops; a transactional email (a lead magnet) still goes
    return None

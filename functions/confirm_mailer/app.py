"""contact.pending -> the double opt-in confirmation email (transactional: no tracking)."""
from aws_lambda_powertools import Logger

from funnelpilot import consent

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    detail = event["detail"]
    message_id = consent.send_confirmation(detail["contact_id"], detail["list"], detail.get("lead_magnet"),
                                           detail["event_id"])
    logger.info("confirmation", extra={"contact_id": detail["contact_id"], "message_id": message_id})
    return {"message_id": message_id}

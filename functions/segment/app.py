"""EventBridge → re-evaluate the segments (infra/segments.yaml) that depend on this event, for one contact."""
from aws_lambda_powertools import Logger

from funnelpilot import segments

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    changes = segments.evaluate(event["detail-type"], event["detail"])
    logger.info("segments evaluated", extra={"contact_id": event["detail"].get("contact_id"), **changes})
    return changes

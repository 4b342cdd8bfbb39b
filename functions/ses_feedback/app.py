"""SES events (bounce, complaint, delivery) from the configuration set, via EventBridge."""
from aws_lambda_powertools import Logger

from funnelpilot import feedback

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    done = feedback.handle(event)
    logger.info("ses feedback", extra={"detail_type": event.get("detail-type"), "done": done})
    return {"done": done}

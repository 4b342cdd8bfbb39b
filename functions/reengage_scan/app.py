"""Daily (EventBridge Scheduler) → contact.inactive for contacts whose inactivity starts today."""
from aws_lambda_powertools import Logger

from funnelpilot import clock, inactivity

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    today = (event.get("scheduled_time") or clock.iso())[:10]
    result = inactivity.scan(today)
    logger.info("inactivity scan", extra=result)
    return result

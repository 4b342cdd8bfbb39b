"""Daily (EventBridge Scheduler) → contact.inactive for the contacts whose inactivity began on
the day that just ended (so each of them has had the full N days without engagement)."""
from datetime import date, timedelta

from aws_lambda_powertools import Logger

from funnelpilot import clock, inactivity

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    today = date.fromisoformat((event.get("scheduled_time") or clock.iso())[:10])
    result = inactivity.scan((today - timedelta(days=1)).isoformat())
    logger.info("inactivity scan", extra=result)
    return result

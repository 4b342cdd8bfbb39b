"""Daily (EventBridge Scheduler) → contact.inactive for the contacts whose inactivity began on
the day that just ended (so each of them has had the full N days without engagement). A run
that nears its timeout continues through ``inactivity.scan_continued`` (the same input)."""
from datetime import date, datetime, timedelta

from aws_lambda_powertools import Logger

from funnelpilot import clock, inactivity

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    scheduled = event.get("scheduled_time") or clock.iso()
    today = date.fromisoformat(scheduled[:10])
    result = inactivity.scan((today - timedelta(days=1)).isoformat(), datetime.fromisoformat(scheduled).timestamp(),
                             lambda: context.get_remaining_time_in_millis() / 1000)
    logger.info("inactivity scan", extra=result)
    return result

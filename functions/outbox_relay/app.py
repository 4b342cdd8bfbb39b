"""DynamoDB stream (inserts of OUTBOX# items and of items carrying events only, template FilterCriteria) -> the bus."""
from aws_lambda_powertools import Logger

from funnelpilot import outbox

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    relayed = outbox.relay(event["Records"])
    logger.info("outbox relayed", extra={"events": relayed})
    return {"relayed": relayed}

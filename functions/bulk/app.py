"""The Task states of the bulk state machine: start, page (Query on gsi1), apply (a batch), report."""
from aws_lambda_powertools import Logger

from funnelpilot import bulk

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    result = bulk.OPERATIONS[event["op"]](event)
    if event["op"] in ("apply", "report"):
        logger.info("bulk " + event["op"], extra={"run_id": event.get("run_id"), "changed": result.get("changed")})
    return result

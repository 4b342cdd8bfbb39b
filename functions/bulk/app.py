"""The Task states of the bulk state machine: start, page (Query on gsi1; or continue the run in a new
execution), apply (a batch), report."""
from aws_lambda_powertools import Logger

from funnelpilot import bulk

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    result = bulk.OPERATIONS[event["op"]](event)
    if event["op"] in ("apply", "report"):
        logger.info("bulk " + event["op"], extra={"run_id": event.get("run_id"), "changed": result.get("changed")})
    elif result.get("status") in ("continued", "superseded"):
        logger.info("bulk " + result["status"], extra={"run_id": event.get("run_id"),
                                                       "execution": result.get("execution")})
    return result

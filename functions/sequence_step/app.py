"""The one Lambda every funnel Task state calls: runs the step's action (send, tag, ...)."""
from aws_lambda_powertools import Logger

from funnelpilot import sequence

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    result = sequence.run(event)
    logger.info("step done", extra={"contact_id": event.get("contact_id"), "state": event.get("state"),
                                    "status": result.get("status")})
    return result

"""broadcast.due -> a broadcast's wave into SendQueue (funnelpilot.broadcasts.launch): the audience read
a page at a time and paced at the send rate; it continues from its cursor when its time runs out."""
from aws_lambda_powertools import Logger

from funnelpilot.broadcasts import launch

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    result = launch.run(event["detail"], lambda: context.get_remaining_time_in_millis() / 1000)
    logger.info("broadcast wave", extra={"broadcast": event["detail"].get("broadcast_id"), **result})
    return result

"""SNS (the SMS configuration set's event destination) → delivery marks and counts (funnelpilot.channels.sms)."""
from aws_lambda_powertools import Logger

from funnelpilot.channels import sms

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    done = sms.feedback(event["Records"])
    logger.info("sms feedback", extra={"done": done})
    return {"done": done}

"""EventBridge → instant sales alert email (infra/alerts.yaml), rate-limited per contact."""
from aws_lambda_powertools import Logger

from funnelpilot.channels import alerts

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    result = alerts.alert(event["detail-type"], event["detail"])
    logger.info("sales alert", extra={"contact_id": event["detail"].get("contact_id"), "result": result})
    return {"result": result}

"""EventBridge → a webhook delivery (infra/webhooks.yaml): the subscription's name and fields come in the rule's input."""
from aws_lambda_powertools import Logger

from funnelpilot.channels import webhooks

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    source = event["event"]
    result = webhooks.deliver(event["webhook"], event.get("fields") or [], source["detail-type"], source["detail"])
    logger.info("webhook", extra={"contact_id": source["detail"].get("contact_id"), "webhook": event["webhook"],
                                  "result": result})
    return {"result": result}

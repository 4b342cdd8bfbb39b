"""EventBridge → funnel entry. Each funnel trigger rule adds the funnel id, its state
machine and its entry rule to the event (InputTransformer in template.yaml)."""
from aws_lambda_powertools import Logger

from funnelpilot import funnels

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    name = funnels.enter(funnel=event["funnel"], state_machine_arn=event["state_machine"],
                         entry_rule=event["entry_rule"], event=event["event"])
    logger.info("funnel entry", extra={"funnel": event["funnel"], "execution": name})
    return {"execution": name}

"""EventBridge → lead and loyalty scoring for one contact (rules: infra/scoring.yaml)."""
from aws_lambda_powertools import Logger

from funnelpilot import scoring

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    outcome = scoring.record(event["detail-type"], event["detail"])
    logger.info("scored", extra={"contact_id": event["detail"].get("contact_id"), "status": outcome.status,
                                 "rules": outcome.rules, "crossed": outcome.crossed})
    return {"status": outcome.status, "points": outcome.points, "crossed": outcome.crossed}

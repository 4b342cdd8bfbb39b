"""Bus events → funnel/step/email counters (MetricsTable) and CloudWatch EMF metrics; an order's
amount → the revenue of the email its last human click came from (funnelpilot.steering.attribution).
(Sends, deliveries, bounces and complaints are counted by their producers, the sequence step and
functions/ses_feedback: funnelpilot.metrics.)

Counters are idempotent (funnelpilot.metrics.record: a counted-once marker, then one ADD), so
EventBridge's at-least-once delivery never counts twice. Step Functions status changes
(default bus) count failed funnel executions.
"""
import os

from aws_lambda_powertools import Logger

from funnelpilot import bus, metrics
from funnelpilot.steering import abtest, attribution

logger = Logger()


def _funnel_failure(event: dict) -> tuple[str, dict]:
    """A failed/timed-out execution of ``<stack>-<funnel>`` as a ``funnel.failed`` detail."""
    detail = event["detail"]
    machine = detail["stateMachineArn"].rsplit(":", 1)[-1]
    funnel = machine.removeprefix(os.environ["STACK_NAME"] + "-")
    return "funnel.failed", {"event_id": event["id"], "contact_id": "", "funnel": funnel,
                             "occurred_at": event.get("time", "")}


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    if event.get("source") == bus.SOURCE:
        detail_type, detail = event["detail-type"], event["detail"]
    else:
        detail_type, detail = _funnel_failure(event)
    counted = attribution.record(detail) if detail_type == "order.placed" else metrics.record(detail_type, detail)
    if counted:
        abtest.on_counted(detail_type, detail)  # an A/B split with a winner rule may have its winner now
        metrics.emit(detail_type, detail)
    logger.debug("counted", extra={"detail_type": detail_type, "counted": counted})
    return {"counted": counted}

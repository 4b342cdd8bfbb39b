"""Bus events → funnel/step/email counters (MetricsTable) and CloudWatch EMF metrics; an order's
amount → the revenue of the email its last human click came from (funnelpilot.steering.attribution).
(Deliveries are counted by functions/ses_feedback itself: only the counters read them.)

Counters are idempotent (funnelpilot.metrics.record: a counted-once marker, then one ADD), so
EventBridge's at-least-once delivery never counts twice. Step Functions status changes
(default bus) count failed funnel executions.
"""
import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from funnelpilot import bus, metrics
from funnelpilot.steering import abtest, attribution

logger = Logger()
ops = Metrics()  # EMF: the operational view on the CloudWatch dashboard

EMF_NAMES = {"email.sent": "EmailsSent", "email.blocked": "EmailsBlocked", "email.bounced": "EmailsBounced",
             "email.complained": "EmailsComplained", "contact.unsubscribed": "Unsubscribes",
             "funnel.converted": "Conversions",
             "funnel.failed": "FunnelExecutionsFailed"}


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
    name = EMF_NAMES.get(detail_type)
    if detail_type in ("email.opened", "email.clicked"):
        kind = "Opens" if detail_type == "email.opened" else "Clicks"
        name = f"{'Human' if detail.get('human') is True else 'Machine'}{kind}"
    # Flushed here rather than by @ops.log_metrics: that warns on every invocation without a
    # metric (duplicates), and while disabled (local runtime) powertools keeps the values
    # and prints them once 100 have piled up.
    if counted and name and not is_metrics_disabled():
        ops.add_metric(name=name, unit=MetricUnit.Count, value=1)
        ops.flush_metrics()
    logger.debug("counted", extra={"detail_type": detail_type, "counted": counted})
    return {"counted": counted}

"""SendQueue -> a broadcast's emails, one chunk of recipients per message (funnelpilot.broadcasts.worker);
partial batch responses (ReportBatchItemFailures): only a failed chunk comes back."""
from aws_lambda_powertools import Logger

from funnelpilot.broadcasts import worker

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    return worker.handle(event)

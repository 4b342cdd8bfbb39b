"""A batch of CSV rows to import: from the import state machine's Distributed Map (ItemReader CSV,
ItemBatcher: ``{"Items": [...], "BatchInput": {...}}``), or from ``funnelpilot contacts import``."""
from aws_lambda_powertools import Logger

from funnelpilot.audience import importer

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    counts = importer.apply(event["Items"], event["BatchInput"])
    logger.info("import batch", extra={"rows": len(event["Items"]), "counts": counts})  # counts only: no address
    return counts

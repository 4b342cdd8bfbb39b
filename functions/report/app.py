"""GET /funnels/{id}/report?from=YYYY-MM-DD&to=YYYY-MM-DD: per-step funnel metrics (admin).

IAM-authorised on AWS (template.yaml); one Query on the metrics table per request."""
import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response

from funnelpilot import http, report

logger = Logger()
app = http.resolver()


@app.get("/funnels/<funnel>/report")
def funnel_report(funnel: str) -> Response:
    params = app.current_event.query_string_parameters or {}
    body = report.funnel_report(funnel, params.get("from") or None, params.get("to") or None)
    if body is None:
        return http.error(404, f"no funnel named {funnel!r}", "id")
    return Response(status_code=200, content_type="application/json", body=json.dumps(body))


handler = http.lambda_handler(app, logger)

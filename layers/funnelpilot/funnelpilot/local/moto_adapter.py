"""The one module that touches moto internals (moto 5.2.5). Three seams:

1. ``LambdaSimpleBackend.invoke``: with ``use_docker: False`` moto runs no code for a
   Lambda invoke; we route it to the in-process handler (Step Functions Task states
   call Lambda through this). A handler exception becomes ``x-amz-function-error:
   Unhandled`` plus an ``{errorType, errorMessage}`` body, so Retry/Catch match the
   error by name exactly as on AWS.
2. ``events.models.Rule.send_to_targets``: moto matches event patterns fully but cannot
   deliver to Lambda or Step Functions targets (``put_events`` raises). We keep moto's
   matcher and input transformation and hand each (target ARN, input) to the runtime,
   which delivers it asynchronously like EventBridge does.
3. SES ``sent_messages``: the raw MIME of every email sent, for the outbox folder.
4. ``DynamoHandler.call_action``: moto applies an UpdateItem/transaction as Python
   read-modify-write, so concurrent requests can lose an ``ADD``. DynamoDB guarantees
   item-level atomicity; one lock around each DynamoDB request gives the same here.
"""
import json
import threading
from typing import Callable

from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.dynamodb.responses import DynamoHandler
from moto.events import models as events_models
from moto.events.utils import EventTemplateParser
from moto.ses.models import ses_backends

Invoker = Callable[[str, dict], object]
Deliverer = Callable[[str, dict], None]

_invoker: Invoker | None = None
_deliverer: Deliverer | None = None


def install(invoker: Invoker, deliverer: Deliverer) -> None:
    global _invoker, _deliverer
    _invoker, _deliverer = invoker, deliverer
    LambdaSimpleBackend.invoke = _invoke
    events_models.Rule.send_to_targets = _send_to_targets
    if not getattr(DynamoHandler.call_action, "_serialised", False):
        DynamoHandler.call_action = _serialised(DynamoHandler.call_action)


_DYNAMODB_LOCK = threading.RLock()


def _serialised(call_action):
    def call(self):
        with _DYNAMODB_LOCK:
            return call_action(self)
    call._serialised = True
    return call


def _invoke(self, function_name, qualifier, body, headers, response_headers):
    name = function_name.split(":function:")[-1].split(":")[0]
    try:
        result = _invoker(name, json.loads(body or "{}"))
        return json.dumps(result).encode()
    except Exception as exc:  # surfaces to Retry/Catch under the exception's class name
        response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()


def _send_to_targets(self, original_event, transform_input: bool = True) -> None:
    if not self.event_pattern.matches_event(original_event):
        return
    for target in self.targets:
        if "InputTransformer" in target:
            transformer = target["InputTransformer"]
            payload = EventTemplateParser.parse(
                input_template=transformer.get("InputTemplate"),
                input_paths_map=transformer.get("InputPathsMap", {}),
                event=original_event,
            )
        elif "Input" in target:
            payload = json.loads(target["Input"])
        else:
            payload = json.loads(json.dumps(original_event, default=str))
        _deliverer(target["Arn"], payload)


def sent_emails(account: str, region: str) -> list[tuple[str, str]]:
    """(SES message id, raw MIME) of every email sent so far, oldest first."""
    return [(m.id, m.raw_data) for m in ses_backends[account][region].sent_messages if hasattr(m, "raw_data")]

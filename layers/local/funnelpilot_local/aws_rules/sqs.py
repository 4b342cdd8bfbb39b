"""SQS as an account enforces it, and the Lambda event source mappings that drain its queues.

Requests (:class:`Sqs`, a gate rule; ``Rules.sqs_limits``), answered with the error SQS's JSON
protocol sends (``Code`` the query code ``AWS.SimpleQueueService.…``, ``QueryErrorCode`` the
modeled shape, so ``client.exceptions.TooManyEntriesInBatchRequest`` catches it as on AWS):
- A message (body in UTF-8 plus each attribute's name, type and value) is at most the queue's
  ``MaximumMessageSize``: ``Rules.sqs_max_message_size`` (262,144 bytes, 256 KiB, the size every
  queue had until 2025) unless the queue sets its own, up to 1,048,576 (1 MiB, the ceiling since
  2025); a SendMessageBatch's entries together the same. moto counts characters, not bytes, and
  leaves attributes out.
- SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch: 1 to 10 entries, ids
  unique, 1-80 characters of ``[A-Za-z0-9_-]``.
- DelaySeconds 0-900 (message, batch entry, queue attribute); a FIFO queue takes none per message.
- VisibilityTimeout 0-43,200 (ReceiveMessage, ChangeMessageVisibility(Batch), queue attribute).

The stack (:func:`event_source_mapping`, checked as the runtime builds it, like aws_rules.cloudformation):
a function's SAM ``SQS`` event is an ``AWS::Lambda::EventSourceMapping``, which Lambda refuses when
- ``BatchSize`` is outside 1-10,000 (FIFO: 10), or above 10 without ``MaximumBatchingWindowInSeconds``
  (0-300; none on FIFO), ``ScalingConfig.MaximumConcurrency`` outside 2-1,000, a
  ``FunctionResponseTypes`` other than ``ReportBatchItemFailures``, more than 5 FilterCriteria
  filters (the default quota), a filter on another key than ``body`` (the only one SQS filters on:
  refused here rather than left never to match);
- the queue's VisibilityTimeout (default 30 s) is less than the function's Timeout (default 3 s):
  "Queue visibility timeout: 30 seconds is less than Function timeout: 60 seconds" (AWS
  recommends six times the timeout, and requires at least the timeout);
- the function's role cannot sqs:ReceiveMessage, sqs:DeleteMessage and sqs:GetQueueAttributes on
  the queue (SAM attaches AWSLambdaSQSQueueExecutionRole to the role it generates; a role of your
  own needs them). Senders need sqs:SendMessage: the IAM family checks each call.

Checked against https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html,
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html,
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html,
https://aws.amazon.com/blogs/compute/more-room-to-build-serverless-services-now-support-payloads-up-to-1-mb,
https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html,
https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-parameters.html,
https://docs.aws.amazon.com/lambda/latest/dg/with-sqs-filtering.html,
https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html,
https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-lambda-eventsourcemapping-scalingconfig.html
and https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaSQSQueueExecutionRole.html.
"""
import json
import re
import threading
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from funnelpilot_local.aws_rules import Call, Rule, Rules, error
from funnelpilot_local.aws_rules.cloudformation import StackError

MAX_DELAY, MAX_VISIBILITY, MAX_BATCH_ENTRIES, MAX_FILTERS = 900, 43_200, 10, 5
CEILING = 1_048_576  # the largest MaximumMessageSize a queue can have (since 2025)
DEFAULT_VISIBILITY, DEFAULT_FUNCTION_TIMEOUT = 30, 3
POLLER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
BATCHES = {"SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"}
_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
# modeled shape -> the query error code SQS sends for it (x-amzn-query-error)
_QUERY_CODES = {shape: f"AWS.SimpleQueueService.{shape}" for shape in (
    "TooManyEntriesInBatchRequest", "BatchEntryIdsNotDistinct", "BatchRequestTooLong", "EmptyBatchRequest",
    "InvalidBatchEntryId")}


def queue_name(params: dict) -> str:
    return params.get("QueueName") or urlsplit(params.get("QueueUrl", "")).path.rsplit("/", 1)[-1]


def message_size(body: str, attributes: dict | None) -> int:
    """Bytes SQS counts for a message: the body in UTF-8 and each attribute's name, type and value."""
    size = len(body.encode("utf-8"))
    for name, attr in (attributes or {}).items():
        size += len(name.encode()) + len(attr.get("DataType", "").encode())
        value = attr.get("StringValue", attr.get("BinaryValue", b""))
        size += len(value.encode() if isinstance(value, str) else value)
    return size


def _refusal(call: Call, shape: str, message: str) -> ClientError:
    refused = error(call.operation, _QUERY_CODES.get(shape, shape), message)
    refused.response["Error"].update(QueryErrorCode=shape, Type="Sender")
    cls = call.client.exceptions.from_code(shape) if call.client is not None else ClientError
    return cls(refused.response, call.operation)


def _invalid(call: Call, value, name: str, reason: str) -> ClientError:
    return _refusal(call, "InvalidParameterValue", f"Value {value} for parameter {name} is invalid. Reason: {reason}")


class Sqs(Rule):
    """The limits of SQS requests (see the module docstring); queue attributes are learnt from the
    CreateQueue/SetQueueAttributes calls it sees (the runtime creates the template's queues through them)."""

    def __init__(self, rules: Rules):
        self.default_size = int(rules.sqs_max_message_size)
        self._sizes: dict[str, int] = {}  # queue name -> its MaximumMessageSize, when it set one
        self._lock = threading.Lock()

    def before(self, call: Call) -> None:
        if call.service != "sqs":
            return
        p, op = call.params, call.operation
        if op in ("CreateQueue", "SetQueueAttributes"):
            self._check_attributes(call, p.get("Attributes", {}))
            return
        name = queue_name(p)
        fifo = name.endswith(".fifo")
        limit = self._sizes.get(name, self.default_size)
        if op == "SendMessage":
            self._check_delay(call, p.get("DelaySeconds"), fifo)
            if message_size(p["MessageBody"], p.get("MessageAttributes")) > limit:
                raise _refusal(call, "InvalidParameterValue", "One or more parameters are invalid. Reason: Message "
                               f"must be shorter than {limit} bytes.")
        elif op in BATCHES:
            entries = p.get("Entries", [])
            if not entries:
                raise _refusal(call, "EmptyBatchRequest", f"There should be at least one {op}RequestEntry in the request.")
            if len(entries) > MAX_BATCH_ENTRIES:
                raise _refusal(call, "TooManyEntriesInBatchRequest", "Maximum number of entries per request are "
                               f"{MAX_BATCH_ENTRIES}. You have sent {len(entries)}.")
            seen = set()
            for entry in entries:
                if not _ENTRY_ID.fullmatch(entry.get("Id", "")):
                    raise _refusal(call, "InvalidBatchEntryId", "A batch entry id can only contain alphanumeric "
                                   "characters, hyphens and underscores. It can be at most 80 letters long.")
                if entry["Id"] in seen:
                    raise _refusal(call, "BatchEntryIdsNotDistinct", f"Id {entry['Id']} repeated.")
                seen.add(entry["Id"])
                if op == "SendMessageBatch":
                    self._check_delay(call, entry.get("DelaySeconds"), fifo)
                elif op == "ChangeMessageVisibilityBatch":
                    self._check_visibility(call, entry.get("VisibilityTimeout"))
            if op == "SendMessageBatch":
                total = sum(message_size(e["MessageBody"], e.get("MessageAttributes")) for e in entries)
                if total > limit:
                    raise _refusal(call, "BatchRequestTooLong", f"Batch requests cannot be longer than {limit} bytes. "
                                   f"You have sent {total} bytes.")
        elif op in ("ReceiveMessage", "ChangeMessageVisibility"):
            self._check_visibility(call, p.get("VisibilityTimeout"))

    def after(self, call: Call, result: dict | None, failure: Exception | None) -> None:
        if call.service == "sqs" and failure is None and call.operation in ("CreateQueue", "SetQueueAttributes"):
            size = call.params.get("Attributes", {}).get("MaximumMessageSize")
            if size is not None:
                with self._lock:
                    self._sizes[queue_name(call.params)] = int(size)

    def _check_attributes(self, call: Call, attributes: dict) -> None:
        if "DelaySeconds" in attributes:
            self._check_delay(call, attributes["DelaySeconds"], False)
        if "VisibilityTimeout" in attributes:
            self._check_visibility(call, attributes["VisibilityTimeout"])
        size = attributes.get("MaximumMessageSize")
        if size is not None and not 1024 <= int(size) <= CEILING:
            raise _refusal(call, "InvalidAttributeValue", f"Invalid value for the parameter MaximumMessageSize. Reason: "
                           f"must be between 1024 and {CEILING}.")

    @staticmethod
    def _check_delay(call: Call, delay, fifo: bool) -> None:
        if delay is None:
            return
        if not 0 <= int(delay) <= MAX_DELAY:
            raise _invalid(call, delay, "DelaySeconds", f"DelaySeconds must be >= 0 and <= {MAX_DELAY}.")
        if fifo and int(delay) > 0:
            raise _invalid(call, delay, "DelaySeconds", "The request include parameter that is not valid for this "
                           "queue type.")

    @staticmethod
    def _check_visibility(call: Call, timeout) -> None:
        if timeout is not None and not 0 <= int(timeout) <= MAX_VISIBILITY:
            raise _invalid(call, timeout, "VisibilityTimeout", f"Must be between 0 and {MAX_VISIBILITY}, if provided.")


def event_source_mapping(name: str, props: dict, queue: dict, function_timeout, role: str, allowed) -> dict:
    """The settings of a function's ``SQS`` event (``props`` resolved; ``queue`` the queue's resolved
    properties), or :class:`StackError` where Lambda's CreateEventSourceMapping refuses it.
    ``allowed(role, action, arn)`` is strict IAM's check, None without it."""
    def refuse(why: str) -> StackError:
        return StackError(f"CREATE_FAILED {name} (AWS::Lambda::EventSourceMapping): Invalid request provided: {why}")

    fifo = bool(queue.get("FifoQueue"))
    batch_size = int(props.get("BatchSize", 10))
    window = int(props.get("MaximumBatchingWindowInSeconds", 0))
    if not 1 <= batch_size <= (10 if fifo else 10_000):
        raise refuse(f"BatchSize {batch_size} is out of range: 1 to {10 if fifo else 10_000} for a "
                     f"{'FIFO' if fifo else 'standard'} queue")
    if not 0 <= window <= 300 or (fifo and window):
        raise refuse(f"MaximumBatchingWindowInSeconds {window}: 0 to 300, and none for a FIFO queue")
    if batch_size > 10 and window < 1:
        raise refuse(f"BatchSize {batch_size} is above 10: set MaximumBatchingWindowInSeconds (at least 1)")
    concurrency = props.get("ScalingConfig", {}).get("MaximumConcurrency")
    if concurrency is not None and not 2 <= int(concurrency) <= 1000:
        raise refuse(f"ScalingConfig.MaximumConcurrency {concurrency} is out of range: 2 to 1000")
    patterns = [f["Pattern"] for f in props.get("FilterCriteria", {}).get("Filters", [])]
    if len(patterns) > MAX_FILTERS:
        raise refuse(f"{len(patterns)} FilterCriteria filters: at most {MAX_FILTERS} per event source mapping")
    for pattern in patterns:
        keys = set(json.loads(pattern)) if isinstance(pattern, str) else set(pattern)
        if keys - {"body"}:
            raise refuse(f"FilterCriteria pattern {pattern}: an SQS event source filters on the body key only "
                         "(a pattern on another key would never match)")
    responses = props.get("FunctionResponseTypes", [])
    if set(responses) - {"ReportBatchItemFailures"}:
        raise refuse(f"FunctionResponseTypes {responses}: only ReportBatchItemFailures exists")
    visibility = int(queue.get("VisibilityTimeout", DEFAULT_VISIBILITY))
    timeout = int(function_timeout or DEFAULT_FUNCTION_TIMEOUT)
    if visibility < timeout:
        raise refuse(f"Queue visibility timeout: {visibility} seconds is less than Function timeout: {timeout} seconds")
    if allowed is not None:
        for action in POLLER_ACTIONS:
            if not allowed(role, action, props["Queue"]):
                raise refuse(f"The provided execution role does not have permissions to call {action.split(':')[1]} "
                             "on SQS")
    return {"batch_size": batch_size, "window": window, "max_concurrency": None if concurrency is None else int(concurrency),
            "report_failures": "ReportBatchItemFailures" in responses, "enabled": props.get("Enabled", True) is not False,
            "filters": patterns,
            "visibility": visibility}

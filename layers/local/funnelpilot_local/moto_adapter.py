"""The one module that touches moto internals (moto 5.2.5). Its seams:

1. ``LambdaSimpleBackend.invoke``: with ``use_docker: False`` moto runs no code for a
   Lambda invoke; we route it to the in-process handler (Step Functions Task states
   call Lambda through this). A handler exception becomes ``x-amz-function-error:
   Unhandled`` plus an ``{errorType, errorMessage}`` body, so Retry/Catch match the
   error by name exactly as on AWS. A throttled invoke (no concurrency left, strict mode)
   is Lambda's own 429 ``TooManyRequestsException`` instead, which Step Functions reports
   as ``Lambda.TooManyRequestsException`` (``StateTaskLambda._from_error``: moto names every
   Lambda service error ``Exception``; Step Functions names it ``Lambda.<error code>``).
2. ``events.models.Rule.send_to_targets``: moto matches event patterns fully but cannot
   deliver to Lambda or Step Functions targets (``put_events`` raises). We keep moto's
   matcher and input transformation (adding ``InputPath``, which moto ignores) and hand each
   (target ARN, input) to the runtime,
   which delivers it asynchronously like EventBridge does (with the event id: strict mode
   may deliver it twice, as EventBridge's at-least-once delivery can). ``EventsBackend.put_events``
   builds and flattens each event once for all the bus's rules (moto did it again per rule).
3. SES ``sent_messages``: the raw MIME of every email sent, for the outbox folder.
   ``SESBackend.send_raw_email`` reads the message's headers only (moto parsed the whole MIME
   tree to read From, To, Cc and Bcc: 5% of a broadcast email's CPU).
4. ``DynamoHandler.call_action``: moto applies an UpdateItem/transaction as Python
   read-modify-write, so concurrent requests can lose an ``ADD``. DynamoDB guarantees
   item-level atomicity; one lock around each DynamoDB request gives the same here. Strict
   mode's conflict rule (``dynamodb_observer``) learns when each request is being processed.
5. ``DynamoDBBackend.transact_write_items``: moto deep-copies every table a transaction
   touches (for rollback), so each transaction costs O(table size) and a long local run
   (the demo: a counter transaction per event) slows down quadratically. Ours checks every
   condition first, then applies the writes, restoring only the touched items on failure
   (and dropping the stream records the failed writes and their undoing appended: a
   cancelled transaction shows nothing in a DynamoDB stream).
6. ``ExecutionWorker._get_evaluation_entrypoint``: moto parses the ASL definition (ANTLR,
   ~45 ms for a funnel) at every execution start; we parse each definition once, pickle the
   parsed program, and hand every execution its own copy unpickled (1-5 ms; a deep copy took
   3-300 ms: the engagement funnel's 313 ms; 3% of the demo). CreateStateMachine's
   validation (``models.AmazonStateLanguageParser``) reads the same cache: a new stack no
   longer re-parses every funnel (~0.28 s a machine, most of a test's set-up). The pickles are
   kept on disk too (:func:`keep_programs_in`: the runtime's ``.local/programs/``), so a process
   parses only a definition no earlier process parsed (ANTLR was 5% of a 40-contact demo).
7. Stepped (virtual) time for the Step Functions interpreter, and a seeded Retry jitter (see
   the section at the end).
8. ``Environment.set_stop``: moto's StopExecution does not interrupt a Task waiting for a
   task token (nor, in stepped time, a parked Wait): the execution would run on until the
   wait's deadline and end FAILED (States.Timeout). We wake those waits, so a stopped
   execution ends ABORTED at once, as on AWS (a goal event stops a funnel this way).
9. ``StepFunctionResponse.get_execution_history``: moto ignores ``reverseOrder`` and
   ``maxResults``; the funnel router reads the latest states of an execution with both.
10. ``ExecutionWorker._execution_logic``: an execution's thread acts as the state machine's
   IAM role (strict mode checks its Lambda invokes against it; aws_rules.principal).
11. Read-only looks at DynamoDB tables for strict mode (aws_rules.dynamodb): a table's key
   attributes, and the item an update expression would leave, computed on a copy.
12. ``LimitedSizeDict.__setitem__``: moto refuses items over 405,000 bytes of its own measure,
   so it refused items DynamoDB stores (the limit is 409,600). Its check stays, as a backstop
   when strict mode's exact one (aws_rules.dynamodb) is off, at DynamoDB's figure. ``Item.__init__``
   makes the same check at each attribute on a running total (moto summed every attribute so far
   again at each one: quadratic in attributes, half of a PutItem's time in moto).
13. ``events.models.EventPattern``: moto's EventBridge pattern matcher, which also decides
   the FilterCriteria of the runtime's DynamoDB stream event source mappings (Lambda's
   filter syntax is EventBridge's).
14. Execution limits for strict mode (:func:`limit_executions`, used by
   ``aws_rules.stepfunctions``; see the section at the end): ``EventManager.add_event``
   (the history limit), moto's ``is_within_size_quota`` as its states import it (the
   payload limit, configurable) and ``ErrorEqualsDecl._eval_body`` (``States.ALL`` does not
   catch the terminal errors).
15. ``boto_client_for`` (Step Functions' Task integrations): moto builds a new boto3 client
   for every Task (~6% of the demo); one client per (region, service) serves them all
   (boto3 clients are thread-safe, and moto's ignores the state's credentials anyway).
27. JSONPath expressions of the Step Functions interpreter (``json_path.parse``, ``result_path.parse``):
   moto parses each path again (jsonpath_ng's yacc parser) at every evaluation of every state; each
   text is parsed once (a parsed path is only read: ``find``, ``update_or_create`` change the data).
16. The runtime's pollers read moto directly: a DynamoDB stream's next records (moto's
   ``get_records``, without serialising every image for botocore to parse back; an empty
   shard is not asked), whether any EventBridge Scheduler schedule exists, and which schedules
   exist and whether each changed since the runtime last asked GetSchedule (:func:`schedule_versions`:
   ListSchedules and a GetSchedule per schedule every simulated hour were 8% of the demo). Through botocore
   and moto an empty GetRecords or ListSchedules costs ~3 ms, the runtime polls each after
   every delivery (a third of the demo's AWS calls), and serialising the records was 7% of
   the demo's CPU.
17. Per-request costs of the in-process transport, while a runtime runs (:func:`uninstall`
   ends it): botocore signs no request (SigV4 is a tenth of a call's CPU; moto reads the
   region from the endpoint's host name and, with no Authorization header, answers as its
   default account, as it does for any access key it has not issued; a presigned URL is
   still signed), moto lists a response class's methods once (``inspect.getmembers``
   at every request, ~5% of a call), and botocore's User-Agent header reuses the sanitised
   text of each of its parts (a pure function of the part; 3% of the demo's CPU was spent
   re-sanitising the same dozen strings character by character at every request).
21. DynamoDB update expressions (``UpdateExpressionParser.make``, ``Validator``): moto parses
   an UpdateItem's expression twice per request (the handler, then the backend; strict mode's
   size check a third time) and deep-copies the tree before validating it. Each expression is
   parsed once, pickled, and every parse hands out a fresh unpickled tree; the validator's copy
   is an unpickling too (a tree of plain nodes: the same copy, 4x cheaper; of a tree parsed this way,
   which moto only reads, the same pickle loaded again). 8% of the demo.
23. ``BaseJSONSerializer._serialize_type_structure``: moto serialises a DynamoDB response by walking
   the botocore output shape, and for every attribute value of every item tries each of the ten
   members of ``AttributeValue`` under four aliases and their snake_case forms (the largest single
   cost of a GetItem, Query or UpdateItem answer: most of the 15% of the demo's CPU moto
   spent serialising answers). An ``AttributeValue`` in
   the form moto's DynamoDB hands the serialiser (one member, plain str / bytes / bool / list / dict
   values) is written directly, as that walk writes it; any other value takes moto's walk.
24. ``Table.all_items`` (what a query on an index and a scan start from): moto sorts the whole table
   by its keys, and each comparison of two keys converts both again (``DynamoType.cast_value``: a
   ``Decimal`` for a number); sorted by each item's converted keys, computed once (the same order:
   keys of one table share a type). 7% of the demo, growing with the table.
25. ``ConditionExpressionParser._lex_condition_expression``: moto lexes a condition (or filter) expression
   token by token, compiling six regular expressions per token, twice per conditional PutItem (the
   handler, then the backend): a quarter of a broadcast email's CPU. The tokens depend on the text
   alone (names and values are looked up after): each text is lexed once, every parse gets its own
   deque of the same immutable tokens, and the rest of moto's parse runs as before.
22. ``execution_event_types``: the cost meter and the demo's journey table read every execution
   history of a run straight from moto's interpreter (GetExecutionHistory's serialisation, event
   by event, was 5% of the demo's CPU).
18. ``StepFunctionResponse.describe_state_machine_for_execution``: the definition the execution
   runs (moto's start-time copy), not the machine's current one (`funnels --stack` prunes content
   versions by what running executions still send).
19. SQS on the runtime clock (:func:`sqs_on_runtime_clock`, see the section at the end): message
   timers (DelaySeconds), visibility timeouts and timestamps follow ``funnelpilot.clock``, the
   runtime's event source mappings look at a queue without receiving (:func:`sqs_queue_state`),
   and sends and batch deletes no longer scan the whole queue per message.
26. DynamoDB requests without HTTP (:func:`_create_request`, :func:`_process_request`): botocore builds
   an HTTP request (``Endpoint.create_request``: AWSRequest, the request-created handlers, prepare) and
   moto's stubber turns it into a werkzeug request, then looks for the URL in every service's URL table
   (``normalize_request``, ``backend_index``): about a tenth of the demo's CPU, for the DynamoDB calls
   (four in five of its calls). While a runtime runs, a DynamoDB, EventBridge or Step Functions request
   (JSON protocols: a POST of a JSON body to "/") to moto in this process is a
   :class:`_DirectRequest` (the request dict's method, URL, headers and body), which moto's stubber
   hands to the service's dispatch (the route its URL table gives, looked up once per URL) as a
   :class:`_MotoRequest`: what ``BaseResponse.setup_class`` reads of a werkzeug request. Everything
   else is botocore's and moto's as before: parameters, serialising, the before-call, before-send,
   response-received, before-parse, needs-retry and after-call handlers, retries, parsing, errors.
   Not run for it: request-created's handlers (SigV4 signing, which a running runtime skips anyway,
   the retry-attempt header, the User-Agent rebuilt with the request's features), which only set
   headers these moto services do not read.
20. Snapshots of moto's backends (:func:`snapshot_backends`, :func:`restore_backends`): the runtime
   builds a stack once per process and restores a deep copy at each later start of the same stack
   (~10 ms instead of ~0.35 s of API calls, most of a test's set-up).
"""
import collections
import contextlib
import copy
import email.parser
import functools
import hashlib
import json
import os
import pickle
import random
import re
import string
import sys
import threading
import warnings
import weakref
from email.utils import formataddr, getaddresses, parseaddr
from pathlib import Path
from typing import Callable

from botocore import useragent
from botocore.exceptions import ClientError
from botocore.endpoint import Endpoint
from botocore.signers import RequestSigner
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.core.base_backend import BackendDict
from moto.core.exceptions import JsonRESTError
from moto.core import responses as moto_responses
from moto.core.responses import ActionResult
from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb import exceptions as ddb_errors
from moto.dynamodb.comparisons import ConditionExpressionParser, get_filter_expression
from moto.dynamodb.models import DynamoDBBackend, dynamo_type, table as ddb_table
from moto.dynamodb.parsing import ast_nodes as ddb_ast, validators as ddb_validators
from moto.dynamodb.parsing.expressions import UpdateExpressionParser
from moto.dynamodb.responses import DynamoHandler
from moto.events import models as events_models
from moto.events import utils as events_utils
from moto.events.utils import EventTemplateParser
from moto.stepfunctions.responses import StepFunctionResponse
from moto.ses import models as ses_models
from moto.ses.models import ses_backends
from moto.ssm.models import ParameterDict
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import StateTaskLambda
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser import models as sfn_models
from moto.stepfunctions.parser.backend import execution_worker
from moto.core.botocore_stubber import BotocoreStubber
from moto.core.config import passthrough_service, passthrough_url, service_whitelisted
from moto.core.exceptions import HTTPException, ServiceNotWhitelisted
from moto.core.models import botocore_stubber
from moto.moto_api import recorder
from moto.dynamodbstreams.models import dynamodbstreams_backends
from moto.scheduler.models import scheduler_backends
from moto import __version__ as moto_version
from moto.settings import moto_server_port
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_dynamodb, state_task_service_events, state_task_service_sfn, state_task_service_sqs)
from moto.stepfunctions.parser.asl.component.common.path import result_path as sfn_result_path
from moto.stepfunctions.parser.asl.utils import boto_client, json_path as sfn_json_path
from werkzeug.datastructures import CombinedMultiDict, Headers, ImmutableMultiDict, MultiDict

_TASK_CLIENT_MODULES = (lambda_eval_utils, state_task_service_dynamodb, state_task_service_events,
                        state_task_service_sfn, state_task_service_sqs)  # each imported boto_client_for by name

from funnelpilot_local.aws_rules import principal
from funnelpilot_local.aws_rules.lambda_ import is_throttle

Invoker = Callable[[str, dict], object]
Deliverer = Callable[..., None]  # (target ARN, input, event_id=...)

_invoker: Invoker | None = None
_deliverer: Deliverer | None = None


def install(invoker: Invoker, deliverer: Deliverer) -> None:
    global _invoker, _deliverer
    _invoker, _deliverer = invoker, deliverer
    LambdaSimpleBackend.invoke = _invoke
    if not getattr(StateTaskLambda._from_error, "_lambda_codes", False):
        StateTaskLambda._from_error = _lambda_error_names(StateTaskLambda._from_error)
    events_models.Rule.send_to_targets = _send_to_targets
    events_models.EventsBackend.put_events = _put_events
    ses_models.SESBackend.send_raw_email = _send_raw_email
    if not getattr(DynamoHandler.call_action, "_serialised", False):
        DynamoHandler.call_action = _serialised(DynamoHandler.call_action)
    DynamoDBBackend.transact_write_items = _transact_write_items
    execution_worker.ExecutionWorker._get_evaluation_entrypoint = _entrypoint
    sfn_models.AmazonStateLanguageParser = _CachedParser
    StepFunctionResponse.get_execution_history = _execution_history
    StepFunctionResponse.describe_state_machine_for_execution = _state_machine_for_execution
    if not hasattr(execution_worker.ExecutionWorker, "_fp_execution_logic"):
        execution_worker.ExecutionWorker._fp_execution_logic = execution_worker.ExecutionWorker._execution_logic
        execution_worker.ExecutionWorker._execution_logic = _execution_logic_as_role
    dynamo_type.LimitedSizeDict.__setitem__ = _limited_setitem
    dynamo_type.Item.__init__ = _item_init
    for module in _TASK_CLIENT_MODULES:
        module.boto_client_for = _task_client
    sqs_on_runtime_clock()
    global _unsigned
    _unsigned = True
    if not hasattr(RequestSigner, "_fp_sign"):
        RequestSigner._fp_sign = RequestSigner.sign
        RequestSigner.sign = _sign
        moto_responses.method_names_from_class = functools.lru_cache(maxsize=None)(
            moto_responses.method_names_from_class)
        useragent.sanitize_user_agent_string_component = functools.lru_cache(maxsize=1024)(
            useragent.sanitize_user_agent_string_component)
        UpdateExpressionParser.make = classmethod(_update_expression)
        ddb_validators.deepcopy = _validator_copy
        BaseJSONSerializer._serialize_type_structure = _json_structure
        ddb_table.Table.all_items = _all_items
        ConditionExpressionParser._lex_condition_expression = _lex_condition_expression
        Endpoint.create_request = _create_request
        BotocoreStubber.process_request = _process_request
        for module in (sfn_json_path, sfn_result_path):  # each imported jsonpath_ng's parse by name
            module.parse = functools.lru_cache(maxsize=1024)(module.parse)


def uninstall() -> None:
    """Back to botocore's signing (the moto patches stay; each checks for a running runtime)."""
    global _unsigned
    _unsigned = False


_unsigned = False


def _sign(self, operation_name, request, region_name=None, signing_type="standard", *args, **kwargs):
    if _unsigned and signing_type == "standard" and self._signing_name != "s3":  # moto's S3: unsigned is anonymous (403)
        return None
    return RequestSigner._fp_sign(self, operation_name, request, region_name, signing_type, *args, **kwargs)


# ---------------------------------------------------------------- 26. DynamoDB requests without HTTP
_botocore_create_request = Endpoint.create_request
_moto_process_request = BotocoreStubber.process_request
_DIRECT = ("dynamodb", "events", "states")  # endpoint prefixes of JSON-protocol services: a POST to "/"
_DIRECT_URL = re.compile(rf"https://(?:{'|'.join(_DIRECT)})\.[a-z0-9-]+\.amazonaws\.com/")


class _DirectRequest:
    """What botocore's sending and moto's stubber read of a prepared request (AWSPreparedRequest)."""

    def __init__(self, method: str, url: str, headers: dict, body: bytes):
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.stream_output = False

    def reset_stream(self) -> None:  # a retry sends the same bytes again
        pass


def _create_request(self, params, operation_model=None):
    """botocore's ``Endpoint.create_request``, or a :class:`_DirectRequest` for a DynamoDB, EventBridge or
    Step Functions request moto answers in this process (a running runtime, moto's mock on, its recorder off)."""
    if (_unsigned and operation_model is not None and botocore_stubber.enabled and params["method"] == "POST"
            and operation_model.service_model.endpoint_prefix in _DIRECT and _DIRECT_URL.fullmatch(params["url"])
            and isinstance(params["body"], bytes) and not recorder._user_enabled):
        return _DirectRequest(params["method"], params["url"], dict(params["headers"]), params["body"])
    return _botocore_create_request(self, params, operation_model)


class _MotoRequest:
    """What moto's ``BaseResponse.setup_class`` and ``parse_parameters`` read of the werkzeug request
    ``normalize_request`` would make of a :class:`_DirectRequest` (a POST of a JSON body, no query,
    no form)."""

    from_wsgi_server = False
    content_encoding = None
    files = form = ImmutableMultiDict()

    def __init__(self, request: _DirectRequest):
        host = request.url.split("/", 3)[2]
        self.method, self.raw_url, self.path = request.method, request.url, "/"
        self.raw_path = self.path
        self.headers = Headers({**{k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()},
                                "Host": host, "Content-Length": str(len(request.body))})
        self.content_type = self.headers.get("Content-Type")
        self.data, self.values, self.environ = request.body, CombinedMultiDict([MultiDict(), self.form]), {}


_routes: dict = {}


def _route(clean_url: str):
    """moto's route for a URL (its stubber's search of every service's URL table), found once per URL:
    the tables are moto's module constants."""
    route = _routes.get(clean_url)
    if route is None:
        from moto import backend_index, backends
        from moto.core import DEFAULT_ACCOUNT_ID

        service = next(service for service, pattern in backend_index.backend_url_patterns if pattern.match(clean_url))
        backend_dict = backends.get_backend(service)
        by_region = backend_dict[DEFAULT_ACCOUNT_ID]
        backend = by_region["us-east-1"] if "us-east-1" in by_region else by_region["aws"]
        handler = next(h for url, h in backend.urls.items() if re.compile(url).match(clean_url))
        route = _routes[clean_url] = (service, handler)
    return route


def _process_request(self, request):
    """moto 5.2.5's ``BotocoreStubber.process_request``; a :class:`_DirectRequest` reaches its route as a
    :class:`_MotoRequest` (not recorded: the direct path is off while moto's recorder is on)."""
    if type(request) is not _DirectRequest:
        return _moto_process_request(self, request)
    clean_url = request.url  # scheme://host/, no query (_DIRECT_URL)
    if passthrough_url(clean_url):
        return None
    service, method_to_execute = _route(clean_url)
    if passthrough_service(service):
        return None
    if not service_whitelisted(service):
        raise ServiceNotWhitelisted(service)
    moto_request = _MotoRequest(request)
    try:
        return method_to_execute(moto_request, moto_request.raw_url, moto_request.headers)
    except HTTPException as e:
        return e.code, e.get_headers(), e.get_body()


_task_clients: dict = {}


def _task_client(region: str, service: str, state_credentials=None):
    """moto 5.2.5's ``boto_client_for``, made once per (region, service, where it sends)."""
    key = (region, service, botocore_stubber.enabled, moto_server_port())
    client = _task_clients.get(key)
    if client is None:
        client = _task_clients[key] = boto_client.boto_client_for(region, service, state_credentials)
    return client


def _limited_setitem(self, key, value) -> None:
    """moto 5.2.5's check with DynamoDB's 400 KB instead of moto's 405,000 bytes."""
    size = sum(i.size() if type(i) is dynamo_type.DynamoType else len(str(i).encode())
               for i in (*self.keys(), *self.values()))
    size += len(key.encode()) + (value.size() if type(value) is dynamo_type.DynamoType else len(str(value).encode()))
    if size > 400 * 1024:
        raise ddb_errors.ItemSizeTooLarge
    dict.__setitem__(self, key, value)


_moto_item_init = dynamo_type.Item.__init__


def _item_init(self, hash_key, range_key, attrs: dict) -> None:
    self.hash_key, self.range_key = hash_key, range_key
    self.attrs, size = dynamo_type.LimitedSizeDict(), 0
    for key, value in attrs.items():
        value = dynamo_type.DynamoType(value)
        size += len(key.encode()) + value.size()  # what _limited_setitem sums: the attributes before, this one
        if size > 400 * 1024:
            raise ddb_errors.ItemSizeTooLarge
        dict.__setitem__(self.attrs, key, value)


_DYNAMODB_LOCK = threading.RLock()


def _execution_logic_as_role(self):
    principal.set_current(self._evaluation_details.aws_execution_details.role_arn)
    return self._fp_execution_logic()


def _execution_history(self):
    history = self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))
    events = list(history["events"])
    if self._get_param("reverseOrder"):
        events.reverse()
    if self._get_param("maxResults"):
        events = events[:int(self._get_param("maxResults"))]
    return ActionResult({**history, "events": events})


def _state_machine_for_execution(self):
    """The definition the execution runs: moto keeps each execution's start-time copy of its state
    machine, but describes the machine as it is now (after an UpdateStateMachine, not what the
    execution runs; AWS answers with the execution's)."""
    arn = self._get_param("executionArn")
    machine = self.stepfunction_backend.describe_state_machine_for_execution(arn)  # ResourceNotFound if none
    execution = next(e for e in machine.executions if e.exec_arn == arn)
    return ActionResult({"stateMachineArn": machine.arn, "name": machine.name,
                         "definition": execution.state_machine.definition, "roleArn": execution.role_arn,
                         "updateDate": machine.update_date})


dynamodb_observer = None  # strict mode (aws_rules.dynamodb): told when moto starts and ends a request


def _serialised(call_action):
    def call(self):
        with _DYNAMODB_LOCK:
            observer = dynamodb_observer
            if observer is not None:
                observer.entered()
            try:
                return call_action(self)
            finally:
                if observer is not None:
                    observer.left()
    call._serialised = True
    return call


def _transact_write_items(self, transact_items: list[dict]) -> None:
    """All conditions, then all writes; same errors and cancellation reasons as moto 5.2.5."""
    if len(transact_items) > 100:
        raise ddb_errors.TooManyTransactionsException()
    targets, errors, writes = set(), [], []
    for item in transact_items:
        if len(item) > 1:
            raise ddb_errors.TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            errors.append(("ValueError", "Unsupported transaction operation", None))
            continue
        table = self.get_table(op["TableName"])
        if op_type == "Put":
            key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
            if table.range_key_attr is not None:
                key[table.range_key_attr] = op["Item"][table.range_key_attr]
        else:
            key = op["Key"]
        unique = (op["TableName"], str(dict(sorted(key.items()))))
        if unique in targets:
            raise ddb_errors.MultipleTransactionsException()
        targets.add(unique)
        current = self.get_item(op["TableName"], key)
        if op.get("ConditionExpression") is not None:
            condition = get_filter_expression(op["ConditionExpression"], op.get("ExpressionAttributeNames"),
                                              op.get("ExpressionAttributeValues"))
            if not condition.expr(current):
                old = (current.to_json()["Attributes"] if current and
                       op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None)
                errors.append(("ConditionalCheckFailed", "The conditional request failed", old))
                continue
        errors.append((None, None, None))
        if op_type != "ConditionCheck":
            writes.append((op_type, op, key, current.to_json()["Attributes"] if current else None))
    if any(code is not None for code, _, _ in errors):
        raise ddb_errors.TransactionCanceledException(errors)
    done = []
    shards = {name: shard for name in {op["TableName"] for _, op, _, _ in writes}
              if (shard := self.get_table(name).stream_shard) is not None}
    stream_lengths = {name: len(shard.items) for name, shard in shards.items()}
    try:
        for op_type, op, key, before in writes:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(op["TableName"], op["Item"])
            elif op_type == "Delete":
                self.delete_item(op["TableName"], key)
            else:
                self.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=names, expression_attribute_values=values,
                                 condition_expression=None)
            done.append((op["TableName"], key, before))
    except Exception as exc:
        for table_name, key, before in reversed(done):  # undo what was applied
            if before is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before)
        for name, shard in shards.items():
            del shard.items[stream_lengths[name]:]
        raise ddb_errors.TransactionCanceledException(
            [(None, None, None)] * len(done) + [(type(exc).__name__, str(exc), None)]) from exc


def dynamodb_key_names(account: str, region: str, table_name: str) -> tuple[str, ...]:
    """The key attribute names of a table (hash, then range if any)."""
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[account][region].get_table(table_name)
    return (table.hash_key_attr,) + ((table.range_key_attr,) if table.range_key_attr else ())


def dynamodb_item(account: str, region: str, table_name: str, key: dict) -> dict | None:
    """The item at ``key`` as GetItem would answer it (None: no item; an invalid key or table raises)."""
    from moto.dynamodb.models import dynamodb_backends

    with _DYNAMODB_LOCK:
        current = dynamodb_backends[account][region].get_item(table_name, key)
        return current.to_json()["Attributes"] if current is not None else None


def dynamodb_updated_item(account: str, region: str, table_name: str, key: dict, update_expression: str,
                          names: dict | None, values: dict | None) -> dict | None:
    """The attributes ``update_expression`` would leave on the item at ``key``, computed on a
    copy (nothing is written, and moto's own size check is skipped: the caller measures it);
    None when moto cannot evaluate the expression (the real request then reports why)."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.parsing.executors import UpdateExpressionExecutor
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import UpdateExpressionValidator

    with _DYNAMODB_LOCK:
        try:
            backend = dynamodb_backends[account][region]
            table = backend.get_table(table_name)
            current = backend.get_item(table_name, key)
            item = copy.deepcopy(current) if current is not None else Item(*backend.get_keys_value(table, key), attrs={})
            item.attrs = dict(item.attrs) if current is not None else {k: dynamo_type.DynamoType(v) for k, v in key.items()}
            validated = UpdateExpressionValidator(UpdateExpressionParser.make(update_expression),
                                                  expression_attribute_names=names or {},
                                                  expression_attribute_values=values or {}, item=item,
                                                  table=table).validate()
            validated.normalize()
            UpdateExpressionExecutor(validated, item, names or {}).execute()
        except Exception:  # noqa: BLE001 - an invalid request: the real call raises moto's error for it
            return None
        return item.to_json()["Attributes"]


_parse_update_expression = UpdateExpressionParser.make  # moto's (a bound classmethod)


@functools.lru_cache(maxsize=512)
def _update_expression_blob(expression: str) -> bytes:
    return pickle.dumps(_parse_update_expression(expression), protocol=pickle.HIGHEST_PROTOCOL)


# A tree _update_expression handed out -> the pickle it came from. moto only reads such a tree (its
# validators change their own copy), so a copy of it is that pickle loaded again.
_unchanged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _update_expression(cls, expression: str):
    """moto's parse of an update expression, a fresh tree each time (an invalid one raises as before:
    lru_cache keeps no failure)."""
    blob = _update_expression_blob(expression)
    tree = pickle.loads(blob)
    _unchanged[tree] = blob
    return tree


def _validator_copy(value, memo=None):
    """``copy.deepcopy`` for moto's expression validators: a tree of plain nodes is copied by pickling
    (a parsed tree: its own pickle loaded again)."""
    if isinstance(value, ddb_ast.Node):
        blob = _unchanged.get(value)
        return pickle.loads(blob if blob is not None else pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return copy.deepcopy(value, memo)


_moto_all_items = ddb_table.Table.all_items


def _all_items(self) -> list:
    items = [item for keyed in self.items.values() for item in (keyed.values() if self.range_key_attr else [keyed])]
    return sorted(items, key=lambda x: (x.hash_key.cast_value, x.range_key.cast_value) if x.range_key
                  else x.hash_key.cast_value)


_lex_condition_text = ConditionExpressionParser._lex_condition_expression  # moto's


@functools.lru_cache(maxsize=1024)
def _condition_tokens(expression: str) -> tuple:
    return tuple(_lex_condition_text(ConditionExpressionParser(expression, None, None)))


def _lex_condition_expression(self) -> collections.deque:
    """moto's tokens of the expression (namedtuples; an invalid text raises as before: lru_cache keeps no
    failure), in a deque of this parse's own: the parse consumes it."""
    return collections.deque(_condition_tokens(self.condition_expression))


_json_structure_walk = BaseJSONSerializer._serialize_type_structure


class _Walk(Exception):
    """A value the direct path does not write: moto's walk does."""


def _json_structure(self, serialized, value, shape, key) -> None:
    if key and shape.name == "AttributeValue" and not self._value_picker.response_transformers:
        try:
            direct = _attribute_value(self, value, shape)
        except _Walk:
            pass
        else:
            return self._default_serialize(serialized, direct, shape, key)
    return _json_structure_walk(self, serialized, value, shape, key)


def _attribute_value(serializer, value, shape):
    """What moto's JSON walk writes for ``{member: value}`` (raises _Walk for anything else)."""
    if type(value) is not dict or len(value) != 1:
        raise _Walk
    (name, v), = value.items()
    member = shape.members.get(name)
    if member is None or member.serialization.get("name", name) != name:
        raise _Walk
    kind = member.type_name
    if kind == "string" and type(v) is str or kind == "boolean" and type(v) is bool:
        return {name: v}
    if kind == "blob" and type(v) in (bytes, str):
        return {name: serializer._base64(v)}
    if kind == "list" and type(v) is list:
        inner = member.member.type_name
        if inner == "string" and all(type(i) is str for i in v):
            return {name: list(v)}
        if inner == "blob" and all(type(i) in (bytes, str) for i in v):
            return {name: [serializer._base64(i) for i in v]}
        if inner == "structure":
            return {name: [_attribute_value(serializer, i, member.member) for i in v]}
    if kind == "map" and type(v) is dict and all(type(k) is str and k for k in v):  # moto's walk writes a "" key's
        # value into the map itself (its top-level case): left to it
        return {name: {k: _attribute_value(serializer, i, member.value) for k, i in v.items()}}
    raise _Walk


_program_dir: Path | None = None  # keep_programs_in


def keep_programs_in(directory: Path | None) -> None:
    """Keep each parsed program in ``directory`` too (None: in memory only), named by a hash of its
    definition, moto's and Python's versions: a later process (another test worker, the next
    ``make demo``) unpickles it instead of parsing it again (~0.2 s of ANTLR for each funnel)."""
    global _program_dir
    _program_dir = directory


@functools.lru_cache(maxsize=64)
def _pickled_program(definition: str) -> bytes:
    """The definition's parsed program, pickled: from :func:`keep_programs_in`'s directory when it holds
    one that unpickles, else parsed (a definition that does not parse raises; nothing is kept of it)."""
    directory, path = _program_dir, None
    if directory is not None:
        key = hashlib.sha256("\0".join((moto_version, sys.version, definition)).encode()).hexdigest()
        path = directory / f"{key}.pickle"
        try:
            blob = path.read_bytes()
            pickle.loads(blob)
            return blob
        except Exception:  # noqa: BLE001 - none kept yet, or unreadable: parsed again and written anew
            pass
    blob = pickle.dumps(AmazonStateLanguageParser.parse(definition)[0], protocol=pickle.HIGHEST_PROTOCOL)
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only or full disk: the parse is kept in memory only
            directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            partial.write_bytes(blob)
            os.replace(partial, path)  # whole or absent, whatever another process writes at once
    return blob


class _CachedParser:
    """What CreateStateMachine validates with: the cached parse (a definition that does not
    parse raises as before; lru_cache keeps no failure)."""

    @staticmethod
    def parse(definition: str):
        return pickle.loads(_pickled_program(definition)), None


def _entrypoint(self):
    return pickle.loads(_pickled_program(self._evaluation_details.state_machine_details.definition))


# ---------------------------------------------------------------- backend snapshots
def snapshot_backends() -> dict:
    """A deep copy of every moto backend in use ((service, account, region) -> backend), taken
    after a stack is built and before anything runs on it."""
    live = {(bd.service_name, bd, account, region): backend for bd in BackendDict._instances
            for account, by_region in bd.items() for region, backend in by_region.items()}
    with _copyable():
        return copy.deepcopy(live, {id(bd): bd for bd in BackendDict._instances})


def restore_backends(snapshot: dict) -> None:
    """Make moto's (freshly reset) backends copies of a snapshot: each backend object is the one
    moto creates for its account and region (references between backends point to them), its
    state a deep copy, so the snapshot serves any number of restores."""
    live = {key: key[1][key[2]][key[3]] for key in snapshot}  # created empty on first access
    memo = {id(bd): bd for bd in BackendDict._instances} | {id(snapshot[key]): backend for key, backend in live.items()}
    with _copyable():
        for key, backend in live.items():
            backend.__dict__ = copy.deepcopy(snapshot[key].__dict__, memo)


def _copy_parameters(params: ParameterDict, memo: dict) -> ParameterDict:
    new = memo[id(params)] = ParameterDict(params.account_id, params.region_name)  # no argument-less __init__
    new.__dict__.update(copy.deepcopy(params.__dict__, memo))
    new.update({name: copy.deepcopy(versions, memo) for name, versions in params.items()})
    return new


@contextlib.contextmanager
def _copyable():
    """While a snapshot is copied: an SQS queue's Condition becomes a new one (deepcopy refuses
    locks; nothing waits on a snapshot), SSM's ParameterDict is rebuilt with its arguments."""
    dispatch = copy._deepcopy_dispatch
    dispatch[threading.Condition] = lambda condition, memo: threading.Condition()
    dispatch[ParameterDict] = _copy_parameters
    try:
        yield
    finally:
        del dispatch[threading.Condition], dispatch[ParameterDict]


class _Throttled(JsonRESTError):
    code = 429


def _invoke(self, function_name, qualifier, body, headers, response_headers):
    name = function_name.split(":function:")[-1].split(":")[0]
    try:
        result = _invoker(name, json.loads(body or "{}"))
        return json.dumps(result).encode()
    except Exception as exc:  # surfaces to Retry/Catch under the exception's class name
        if is_throttle(exc):  # Lambda refused the invoke: the function never ran
            raise _Throttled("TooManyRequestsException", exc.response["Error"]["Message"]) from exc
        response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()


def _lambda_error_names(from_error):
    def named(self, env, ex):
        event = from_error(self, env, ex)
        if isinstance(ex, ClientError):
            event.error_name = CustomErrorName(f"Lambda.{ex.response['Error']['Code']}")
            details = event.event_details.get("lambdaFunctionFailedEventDetails")
            if details is not None:
                details["error"] = event.error_name.error_name
        return event
    named._lambda_codes = True
    return named


_moto_put_events = events_models.EventsBackend.put_events


def _send_to_targets(self, original_event, transform_input: bool = True) -> None:
    if self.event_pattern.matches_event(original_event):
        _to_targets(self, original_event)


def _to_targets(rule, original_event) -> None:
    """Hand a matched event to the runtime, once per target of the rule, as each target's input."""
    for target in rule.targets:
        if "InputTransformer" in target:
            transformer = target["InputTransformer"]
            payload = EventTemplateParser.parse(
                input_template=transformer.get("InputTemplate"),
                input_paths_map=transformer.get("InputPathsMap", {}),
                event=original_event,
            )
        elif "Input" in target:
            payload = json.loads(target["Input"])
        elif "InputPath" in target:  # moto ignores it (5.2.5): a plain $.a.b path, as the template uses
            payload = json.loads(json.dumps(original_event, default=str))
            for key in target["InputPath"].removeprefix("$").strip(".").split("."):
                payload = payload[key] if key else payload
        else:
            payload = json.loads(json.dumps(original_event, default=str))
        _deliverer(target["Arn"], payload, event_id=original_event.get("id"))


def _put_events(self, events: list[dict]) -> list[dict]:
    """moto 5.2.5's ``EventsBackend.put_events``: the same checks, entries and deliveries, but each event
    is built, decoded and flattened for matching once (moto did all three again for every rule of the
    bus, ~25 here: 9% of a broadcast's CPU), then matched against each rule's pattern by moto's matcher.
    A rule's targets get their own copies (``_to_targets``), as before."""
    if len(events) > 10:
        raise events_models.ValidationException(
            "1 validation error detected: Value '[PutEventsRequestEntry]' at 'entries' failed to satisfy constraint: "
            "Member must have length less than or equal to 10")
    entries = []
    for event in events:
        for field in ("Source", "DetailType", "Detail"):
            if not event.get(field):
                entries.append({"ErrorCode": "InvalidArgument",
                                "ErrorMessage": f"Parameter {field} is not valid. Reason: {field} is a required argument."})
                break
        else:
            try:
                detail = json.loads(event["Detail"])
                if not isinstance(detail, dict):
                    warnings.warn(f"EventDetail should be of type dict - types such as {type(detail)} are ignored by AWS",
                                  stacklevel=2)
            except ValueError:
                entries.append({"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."})
                continue
            event_id = str(events_models.random.uuid4())
            entries.append({"EventId": event_id})
            bus = self.describe_event_bus(self._normalize_event_bus_arn(event.get("EventBusName")))
            message = {**copy.deepcopy(events_utils._BASE_EVENT_MESSAGE), "id": event_id,
                       "detail-type": event["DetailType"], "source": event["Source"], "account": self.account_id,
                       "time": event.get("Time", events_models.unix_time()), "region": self.region_name,
                       "resources": event.get("Resources", []), "detail": detail,
                       "ingestion-time": events_models.unix_time()}
            flat = None
            for rule in bus.rules.values():
                pattern = rule.event_pattern
                if pattern._pattern:
                    if flat is None:  # what matches_event matches: the event through JSON, flattened
                        flat = pattern._flatten_dict(json.loads(json.dumps(message)))
                    if not pattern._does_event_match(flat, pattern._pattern):
                        continue
                _to_targets(rule, message)
    return entries


def event_filter(pattern: str, plain: bool = False) -> Callable[[dict], bool]:
    """A predicate: does an event (or a stream record) match this EventBridge-syntax pattern.
    ``plain``: every event it sees holds JSON values only (as ``json.loads`` gives them, like the
    runtime's stream records): moto's ``matches_event`` first copies an event through
    ``json.loads(json.dumps(...))``, which gives such an event back equal (half of matching a record)."""
    matcher = events_models.EventPattern.load(pattern)
    if not plain or not matcher.get_pattern():
        return matcher.matches_event
    return lambda event: matcher._does_event_match(matcher._flatten_dict(event), matcher.get_pattern())


def stream_records(account: str, region: str, iterator: str, limit: int) -> tuple[list[dict], str]:
    """GetRecords (up to ``limit``) and the next shard iterator, as moto answers it before
    serialising: the records are moto's own (copy before changing them), with
    ``ApproximateCreationDateTime`` a naive UTC datetime. No record: the same iterator."""
    backend = dynamodbstreams_backends[account][region]
    it = backend.shard_iterators[iterator]
    if it.sequence_number - it.stream_shard.starting_sequence_number >= len(it.stream_shard.items):
        return [], iterator
    page = backend.get_records(iterator, limit)
    return page["Records"], page["NextShardIterator"]


def execution_event_types(account: str, region: str, machine_arn: str) -> list[list[str]]:
    """For each execution of a state machine (newest first, as ListExecutions gives them), the types of
    its history events in order, as GetExecutionHistory would list them."""
    from moto.stepfunctions.responses import get_backend

    executions = get_backend(account, region).describe_state_machine(machine_arn).executions
    return [[getattr(e["type"], "value", e["type"]) for e in ex.to_history_output()["events"]]
            for ex in sorted(executions, key=lambda x: x.start_date, reverse=True)]


def any_schedules(account: str, region: str) -> bool:
    """Whether the account has an EventBridge Scheduler schedule in any group."""
    return any(group.schedules for group in scheduler_backends[account][region].schedule_groups.values())


def schedule_versions(account: str, region: str) -> list[tuple[str, str, str, tuple]]:
    """(name, group, state, version) of every EventBridge Scheduler schedule, in ListSchedules' order;
    the version changes whenever GetSchedule's answer can (a new schedule object, an update)."""
    backend = scheduler_backends[account][region]
    listed = [s for group in backend.schedule_groups.values() for s in group.schedules.values()]
    listed.sort(key=lambda s: s.creation_date, reverse=True)  # moto 5.2.5's list_schedules: newest first
    return [(s.name, s.group_name, s.state, (s.arn, id(s), s.last_modified_date)) for s in listed]


def _send_raw_email(self, source: str, destinations: list[str], raw_data: str):
    """moto 5.2.5's, with the headers parsed as ``email.message_from_string`` parses them, and nothing else."""
    if source is not None:
        _, source_email_address = parseaddr(source)
        if not self._is_verified_address(source_email_address):
            raise ses_models.MessageRejectedError(f"Did not have authority to send from email {source_email_address}")
    message = email.parser.Parser().parsestr(raw_data, headersonly=True)
    if source is None:
        if message["from"] is None:
            raise ses_models.MessageRejectedError("Source not specified")
        _, source = parseaddr(message["from"])
        if not self._is_verified_address(source):
            raise ses_models.MessageRejectedError(f"Did not have authority to send from email {source}")
    fieldvalues = [message[header] for header in ["TO", "CC", "BCC"] if header in message]
    destinations += [formataddr((realname, address)) for realname, address in getaddresses(fieldvalues) if address]
    if len(destinations) > ses_models.RECIPIENT_LIMIT:
        raise ses_models.MessageRejectedError("Too many recipients.")
    for address in [addr for addr in [source, *destinations] if addr is not None]:
        msg = ses_models.is_valid_address(address)
        if msg is not None:
            raise ses_models.InvalidParameterValue(msg)
    self.__process_sns_feedback__(source, destinations)
    self.sent_message_count += len(destinations)
    raw_message = ses_models.RawMessage(ses_models.get_random_message_id(), source, destinations, raw_data)
    self.sent_messages.append(raw_message)
    return raw_message


_moto_send_raw_email = ses_models.SESBackend.send_raw_email


def sent_emails(account: str, region: str) -> list[tuple[str, str]]:
    """(SES message id, raw MIME) of every email sent so far, oldest first."""
    return sent_emails_since(account, region, 0)[0]


def sent_emails_since(account: str, region: str, position: int) -> tuple[list[tuple[str, str]], int]:
    """The emails sent from moto's ``position``-th SES message on (as :func:`sent_emails`), and the
    position to ask from next time: a look at what is new, not at every email again (the runtime and
    the demo look after every delivery; listing all of them each time grew with the run)."""
    messages = ses_backends[account][region].sent_messages
    end = len(messages)
    return [(m.id, m.raw_data) for m in messages[position:end] if hasattr(m, "raw_data")], end


# ---------------------------------------------------------------- 5. stepped (virtual) time
# moto's interpreter waits in real time (Wait states, TimeoutSeconds, task tokens, Retry
# intervals), one thread per execution and per Task. In the stepped mode (the demo and
# anything that must be deterministic) those waits block on the funnelpilot clock instead,
# and the Scheduler knows how many interpreter threads can still run: the runtime advances
# the clock only when none can, and wakes waiters one at a time in (deadline, order) order.
# So the same inputs give the same outputs whatever the thread timing.
from moto.stepfunctions.parser.asl.component.common.retry import jitter_strategy_decl, retrier_decl  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.exec import execute_state  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function  # noqa: E402
from moto.stepfunctions.parser.asl.eval import environment as sfn_environment  # noqa: E402
from moto.stepfunctions.parser.asl.eval.program_state import ProgramError, ProgramStopped  # noqa: E402
from moto.stepfunctions.parser.asl.eval.callback import callback as sfn_callback  # noqa: E402

from funnelpilot import clock  # noqa: E402


class Waiter:
    __slots__ = ("deadline", "order", "state", "event")

    def __init__(self, deadline: float | None, order: int):
        self.deadline, self.order, self.state, self.event = deadline, order, "running", threading.Event()


class Scheduler:
    """Counts runnable interpreter threads and parks the others on the virtual clock."""

    def __init__(self):
        self.cond = threading.Condition()
        self.busy = 0
        self.parked: list[Waiter] = []
        self._order = 0

    def waiter(self, seconds: float | None) -> Waiter:
        with self.cond:
            self._order += 1
            return Waiter(None if seconds is None else clock.now() + seconds, self._order)

    def started(self) -> None:
        with self.cond:
            self.busy += 1

    def finished(self) -> None:
        with self.cond:
            self.busy -= 1
            self.cond.notify_all()

    def park(self, w: Waiter) -> None:
        """Block the calling interpreter thread until ``wake(w)`` (by the clock or an event)."""
        with self.cond:
            if w.state == "woken":
                return
            w.state = "parked"
            self.busy -= 1
            self.parked.append(w)
            self.cond.notify_all()
        w.event.wait()

    def wake(self, w: Waiter | None) -> None:
        """Make a waiter runnable again, counted busy from now (before its thread runs)."""
        if w is None:
            return
        with self.cond:
            if w.state == "parked":
                self.busy += 1
                self.parked.remove(w)
            w.state = "woken"
        w.event.set()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.park(self.waiter(seconds))

    def sleep_here(self, seconds: float) -> bool:
        """``clock.sleep`` in stepped time: a state machine's thread (a Task's handler) parks on the
        virtual clock; any other thread (the runtime's, a test's) cannot, or nothing would move it."""
        if not getattr(_interpreter, "thread", False):
            return False
        self.sleep(seconds)
        return True

    def next_due(self, until: float) -> Waiter | None:
        with self.cond:
            due = [w for w in self.parked if w.deadline is not None and w.deadline <= until]
            return min(due, key=lambda w: (w.deadline, w.order)) if due else None

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.busy <= 0, timeout)


_scheduler: Scheduler | None = None
_original = {}
_interpreter = threading.local()  # .thread: True in the threads the Scheduler counts (Scheduler.sleep_here)


def use_virtual_time(scheduler: Scheduler | None) -> None:
    """Switch the interpreter's waits to ``scheduler`` (None: back to moto's real-time waits).
    In stepped time the Retry jitter (``JitterStrategy: FULL``) draws from a generator seeded
    at each switch, so a run with retries is as repeatable as one without."""
    global _scheduler
    _scheduler = scheduler
    clock._sleeper = scheduler.sleep_here if scheduler is not None else None
    jitter_strategy_decl.random = random.Random(0) if scheduler is not None else random
    if _original:
        return
    _original.update(start=execution_worker.ExecutionWorker.start,
                     wait_interval=wait_function.WaitFunction._wait_interval,
                     with_timeout=execute_state.ExecutionState._evaluate_with_timeout,
                     cb_wait=sfn_callback.CallbackEndpoint.wait, cb_notify=sfn_callback.CallbackEndpoint.notify,
                     cb_interrupt=sfn_callback.CallbackEndpoint.interrupt_all, retry_time=retrier_decl.time,
                     set_stop=sfn_environment.Environment.set_stop,
                     set_error=sfn_environment.Environment.set_error)
    sfn_environment.Environment.set_stop = _set_stop
    sfn_environment.Environment.set_error = _set_error
    execution_worker.ExecutionWorker.start = _worker_start
    wait_function.WaitFunction._wait_interval = _wait_interval
    execute_state.ExecutionState._evaluate_with_timeout = _evaluate_with_timeout
    sfn_callback.CallbackEndpoint.wait = _callback_wait
    sfn_callback.CallbackEndpoint.notify = _callback_notify
    sfn_callback.CallbackEndpoint.interrupt_all = _callback_interrupt
    retrier_decl.time = _RetryClock()


class _RetryClock:
    """Stands in for the ``time`` module in moto's retrier (it only calls ``sleep``)."""

    def sleep(self, seconds: float) -> None:
        if _scheduler is None:
            _original["retry_time"].sleep(seconds)
        else:
            _scheduler.sleep(seconds)


def _worker_start(self) -> None:
    if _scheduler is None:
        return _original["start"](self)
    scheduler = _scheduler
    scheduler.started()

    def run():
        _interpreter.thread = True
        try:
            self._execution_logic()
        finally:
            scheduler.finished()

    thread = threading.Thread(target=run, daemon=True)
    execution_worker.TMP_THREADS.append(thread)
    thread.start()


def _wait_interval(self, env, wait_seconds) -> None:
    if _scheduler is None:
        return _original["wait_interval"](self, env, wait_seconds)
    if wait_seconds > 0 and env.is_running():
        w = _scheduler.waiter(wait_seconds)
        env.__dict__.setdefault("_fp_waiters", []).append(w)  # woken early by _set_stop
        _scheduler.park(w)


def _set_stop(self, stop_date, cause, error) -> None:
    """StopExecution: also end the waits of this execution (task tokens, parked Wait states)."""
    _original["set_stop"](self, stop_date, cause, error)
    _end_waits(self)


def _set_error(self, error) -> None:
    """A wait interrupted by StopExecution fails; the execution stays ABORTED, as on AWS."""
    if isinstance(self._program_state, ProgramStopped):
        return
    _original["set_error"](self, error)


def _evaluate_with_timeout(self, env) -> None:
    """moto 5.2.5's ExecutionState._evaluate_with_timeout with the wait on the virtual clock."""
    if _scheduler is None:
        return _original["with_timeout"](self, env)
    scheduler = _scheduler
    self.timeout.eval(env=env)
    timeout_seconds = env.stack.pop()
    frame = env.open_frame()
    frame.states.reset(input_value=env.states.get_input())
    frame.stack = execute_state.copy.deepcopy(env.stack)
    outputs, exceptions = [], [None]
    terminated = threading.Event()
    parent = scheduler.waiter(timeout_seconds)

    def exec_and_notify():
        _interpreter.thread = True
        try:
            self._eval_execution(frame)
            outputs.extend(frame.stack)
        except Exception as ex:  # noqa: BLE001 - handed to the parent as moto does
            exceptions.append(ex)
        finally:
            terminated.set()
            scheduler.wake(parent)
            scheduler.finished()

    scheduler.started()
    thread = threading.Thread(target=exec_and_notify, daemon=True)
    execute_state.TMP_THREADS.append(thread)
    thread.start()
    scheduler.park(parent)
    finished_on_time = terminated.is_set()
    frame.set_ended()
    env.close_frame(frame)
    exception = exceptions.pop()
    if exception:
        raise exception
    if not finished_on_time:
        raise execute_state.EvalTimeoutError()
    env.stack.append(outputs.pop())
    if not self._is_language_query_jsonpath():
        env.states.set_result(env.stack[-1])
    if self.assign_decl:
        self.assign_decl.eval(env=env)
    if self.result_selector:
        self.result_selector.eval(env=env)
    if self.result_path:
        self.result_path.eval(env)
    else:
        res = env.stack.pop()
        env.states.reset(input_value=res)


def _callback_wait(self, timeout: float | None = None):
    if _scheduler is None:
        return _original["cb_wait"](self, timeout)
    w = _scheduler.waiter(timeout)
    with _scheduler.cond:
        self._fp_waiter = w
        if self._notify_event.is_set():
            w.state = "woken"
    _scheduler.park(w)
    return self._outcome


def _callback_notify(self, outcome) -> None:
    _original["cb_notify"](self, outcome)
    if _scheduler is not None:
        _scheduler.wake(getattr(self, "_fp_waiter", None))


def _callback_interrupt(self) -> None:
    _original["cb_interrupt"](self)
    if _scheduler is not None:
        _scheduler.wake(getattr(self, "_fp_waiter", None))


# ---------------------------------------------------------------- 11. execution limits (strict mode)
# moto records every history event but never ends an execution for having too many; it
# checks state and task results against a fixed 256 KB with ``<`` (AWS allows 262,144 bytes);
# and its ``States.ALL`` also catches States.DataLimitExceeded and States.Runtime, which AWS
# documents as terminal. aws_rules.stepfunctions sets the limits through limit_executions().
from moto.stepfunctions.parser.api import ExecutionFailedEventDetails, HistoryEventType  # noqa: E402
from moto.stepfunctions.parser.asl.component.common.error_name import error_equals_decl  # noqa: E402
from moto.stepfunctions.parser.asl.component.state import state as sfn_state  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_lambda  # noqa: E402
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service  # noqa: E402
from moto.stepfunctions.parser.asl.eval.event import event_manager as sfn_events  # noqa: E402
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails  # noqa: E402
from moto.stepfunctions.parser.asl.utils.encoding import to_json_str  # noqa: E402

_limits: dict = {"history": None, "payload": None}  # None: moto's own behaviour
_limit_original: dict = {}
_original_size_check = sfn_state.is_within_size_quota
_TERMINAL_ERRORS = ("States.DataLimitExceeded", "States.Runtime")
_END_EVENTS = (HistoryEventType.ExecutionSucceeded, HistoryEventType.ExecutionFailed,
               HistoryEventType.ExecutionAborted, HistoryEventType.ExecutionTimedOut)


def limit_executions(history: int | None, payload: int | None) -> None:
    """Enforce AWS's execution limits from now on: an execution fails when its history
    reaches ``history`` events; state input/output is at most ``payload`` UTF-8 bytes
    (None: moto's own behaviour)."""
    _limits.update(history=history, payload=payload)
    if _limit_original:
        return
    _limit_original.update(add_event=sfn_events.EventManager.add_event,
                           environment=execution_worker.ExecutionWorker._get_evaluation_environment,
                           error_equals=error_equals_decl.ErrorEqualsDecl._eval_body,
                           set_error=sfn_environment.Environment.set_error)
    sfn_events.EventManager.add_event = _add_event
    sfn_environment.Environment.set_error = _keep_history_failure
    execution_worker.ExecutionWorker._get_evaluation_environment = _environment
    error_equals_decl.ErrorEqualsDecl._eval_body = _error_equals
    for module in (sfn_state, state_task_lambda, state_task_service):  # each imported the function by name
        module.is_within_size_quota = _within_payload_limit


def _environment(self):
    env = _limit_original["environment"](self)
    env.event_manager._fp_env = env  # the root environment: the history limit ends it
    env.event_manager._fp_lock = threading.Lock()
    return env


def _add_event(self, context, event_type, event_details=None, timestamp=None, update_source_event_id=True):
    """Publish an event; the one that would reach the limit becomes the execution's
    ExecutionFailed (States.Runtime) instead, as on AWS, and nothing is recorded after it."""
    limit, env, lock = _limits["history"], getattr(self, "_fp_env", None), getattr(self, "_fp_lock", None)
    args = (context, event_type, event_details, timestamp, update_source_event_id)
    if limit is None or env is None:
        return _limit_original["add_event"](self, *args)
    with lock:
        if getattr(self, "_fp_cut", None) is not None:
            return self._fp_cut  # the execution already failed on its history limit
        if self._event_id_gen._next_id < limit or event_type in _END_EVENTS:
            return _limit_original["add_event"](self, *args)
        error = ExecutionFailedEventDetails(
            error="States.Runtime", cause=f"The execution reached the maximum number of history events ({limit}).")
        self._fp_cut = _limit_original["add_event"](self, context, HistoryEventType.ExecutionFailed,
                                              EventDetails(executionFailedEventDetails=error))
    env.set_error(error)
    _end_waits(env)
    return self._fp_cut


def _keep_history_failure(self, error) -> None:
    """What the interrupted states raise afterwards does not replace the history failure."""
    if getattr(self.event_manager, "_fp_cut", None) is not None and isinstance(self._program_state, ProgramError):
        return
    _limit_original["set_error"](self, error)


def _end_waits(env) -> None:
    """Wake what this execution waits on (task tokens, parked Wait states), so it ends now."""
    for endpoint in list(env.callback_pool_manager._pool.values()):
        endpoint.interrupt_all()
    if _scheduler is not None:
        for w in env.__dict__.get("_fp_waiters", ()):
            _scheduler.wake(w)


def _within_payload_limit(value) -> bool:
    limit = _limits["payload"]
    if limit is None:
        return _original_size_check(value)
    text = value if isinstance(value, str) else to_json_str(value)
    return len(text.encode("utf-8")) <= limit



def _error_equals(self, env) -> None:
    """``States.ALL`` matches any error but the terminal States.DataLimitExceeded and
    States.Runtime (AWS; moto matches those too)."""
    if (_limits["payload"] is not None and error_equals_decl.ErrorEqualsDecl._STATE_ALL_ERROR in self.error_names
            and getattr(env.stack[-1], "error_name", None) in _TERMINAL_ERRORS):
        env.stack.pop()
        env.stack.append(False)
        return
    _limit_original["error_equals"](self, env)



# ---------------------------------------------------------------- 19. SQS on the runtime clock
# moto's SQS reads the time through ``unix_time``/``unix_time_millis`` imported into its models
# module: replacing those two names puts delays, visibility timeouts, SentTimestamp and the
# receive timestamps on the runtime clock, so a stepped test that advances 1 s sees a message
# delayed 1 s become visible. Three more differences from SQS are fixed on the way:
# - moto makes a message visible again only strictly after its timeout (``>``): at the instant
#   it ends, as SQS does, is what a stepped clock lands on;
# - ChangeMessageVisibility measures the 12-hour limit from the message's *sending* (so a message
#   older than 12 h, a broadcast re-queued all day, could not be hidden at all); SQS measures it
#   from the receive that made it in flight;
# - long polling (WaitTimeSeconds, the queue's ReceiveMessageWaitTimeSeconds) waits in real time,
#   forever on a stepped clock (nothing can arrive while the caller waits): on a stepped or
#   compressed clock a receive answers at once.
# Retention (MessageRetentionPeriod) is not enforced: moto would stop a receive at the first
# expired message, and a test's tap queue would lose what a journey of days published.
# Costs that grow with the queue, cut so that a 10,000-message send queue drains in seconds: a
# SendMessage reads ``queue.attributes`` (for ContentBasedDeduplication), which counts the
# visible, in-flight and delayed messages, three scans of the queue per message sent (skipped
# inside a send: nothing there reads them) and converts every attribute name with a regex (cached);
# DeleteMessage scans the queue twice per message (DeleteMessageBatch does one scan for its
# entries); a receive recomputes the message groups in flight, a scan of every in-flight message,
# for each message whose visibility timeout ended (a standard queue has none); a receipt handle
# draws its 185 letters one call at a time.
from moto.sqs import models as sqs_models  # noqa: E402
from moto.sqs.models import sqs_backends  # noqa: E402

from funnelpilot_local.aws_rules.sqs import MAX_VISIBILITY  # noqa: E402 - in flight at most, from the receive


def _sqs_now() -> float:
    return clock.now()


def _sqs_now_ms() -> float:
    return clock.now() * 1000.0


def _sqs_visible(self) -> bool:
    return _sqs_now_ms() >= self.visible_at


def _sqs_receivable(self) -> list:
    """moto's ``Queue.messages`` (visible and not delayed), reading the clock once."""
    now = _sqs_now_ms()
    return [m for m in self._messages if m.visible_at <= now and m.delayed_until <= now]


def _sqs_mark_received(self, visibility_timeout=None) -> None:
    _sqs_original["mark_received"](self, visibility_timeout)
    self.fp_received_at = _sqs_now_ms()


def _sqs_change_visibility(self, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
    """moto 5.2.5's change_message_visibility, the 12-hour limit counted from the last receive."""
    queue = self.get_queue(queue_name)
    for message in queue._messages:
        if message.had_receipt_handle(receipt_handle):
            received = getattr(message, "fp_received_at", message.sent_timestamp)
            if _sqs_now_ms() + int(visibility_timeout) * 1000 - received > MAX_VISIBILITY * 1000:
                raise sqs_models.InvalidParameterValue(
                    f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                    f"VisibilityTimeout for the message is beyond the limit [{MAX_VISIBILITY} seconds]")
            message.change_visibility(visibility_timeout)
            if message.visible and message in queue.pending_messages:
                queue.pending_messages.remove(message)
            return
    raise sqs_models.ReceiptHandleIsInvalid


def _sqs_receive(self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names=None):
    if _scheduler is not None or clock.speed() != 1.0:  # stepped (the clock stands still) or compressed
        wait_seconds_timeout = 0
    return _sqs_original["receive"](self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                                    message_attribute_names)


_sqs_local = threading.local()
_SQS_COUNTS = ("approximate_number_of_messages", "approximate_number_of_messages_not_visible",
               "approximate_number_of_messages_delayed")


def _sqs_send(self, *args, **kwargs):
    _sqs_local.sending = True
    try:
        return _sqs_original["send"](self, *args, **kwargs)
    finally:
        _sqs_local.sending = False


def _sqs_count(name: str) -> property:
    counted = getattr(sqs_models.Queue, name).fget

    def count(self) -> int:
        return 0 if getattr(_sqs_local, "sending", False) else counted(self)
    return property(count)


def _sqs_delete_batch(self, queue_name: str, receipts: list[dict]) -> tuple[list[str], list[dict]]:
    """moto 5.2.5's delete_message_batch (same answers, a handle deleted before succeeds again) in one
    scan, which ends when every handle is found (the oldest messages, at the front, are deleted first)."""
    queue = self.get_queue(queue_name)
    wanted, found, drop = {r["ReceiptHandle"] for r in receipts}, set(), []
    missing = wanted - queue.deleted_messages
    for i, message in enumerate(queue._messages):
        if not missing:
            break
        if message.receipt_handle not in wanted and wanted.isdisjoint(message._old_receipt_handles):
            continue
        handles = message.all_receipt_handles
        found.update(wanted.intersection(handles))
        missing.difference_update(handles)
        queue.pending_messages.discard(message)
        queue.deleted_messages.update(handles)
        drop.append(i)
    for i in reversed(drop):
        del queue._messages[i]
    success, errors = [], []
    for r in receipts:
        if r["ReceiptHandle"] in found or r["ReceiptHandle"] in queue.deleted_messages:
            success.append(r["Id"])
        else:
            errors.append({"Id": r["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid",
                           "Message": f'The input receipt handle "{r["ReceiptHandle"]}" is not a valid receipt handle.'})
    return success, errors


def _receipt_handle() -> str:
    return "".join(sqs_models.random.choices(string.ascii_lowercase, k=185))


_sqs_original: dict = {}


def sqs_on_runtime_clock() -> None:
    if _sqs_original:
        return
    _sqs_original.update(mark_received=sqs_models.Message.mark_received,
                         receive=sqs_models.SQSBackend.receive_message, send=sqs_models.SQSBackend.send_message)
    sqs_models.SQSBackend.send_message = _sqs_send
    for name in _SQS_COUNTS:
        setattr(sqs_models.Queue, name, _sqs_count(name))
    sqs_models.SQSBackend.delete_message_batch = _sqs_delete_batch
    sqs_models.camelcase_to_underscores = functools.lru_cache(maxsize=256)(sqs_models.camelcase_to_underscores)
    groups = sqs_models.Queue.pending_message_groups.fget
    sqs_models.Queue.pending_message_groups = property(lambda self: groups(self) if self.fifo_queue else set())
    sqs_models.generate_receipt_handle = _receipt_handle
    sqs_models.unix_time = _sqs_now
    sqs_models.unix_time_millis = _sqs_now_ms
    sqs_models.Message.visible = property(_sqs_visible)
    sqs_models.Queue.messages = property(_sqs_receivable)
    sqs_models.Message.mark_received = _sqs_mark_received
    sqs_models.SQSBackend.change_message_visibility = _sqs_change_visibility
    sqs_models.SQSBackend.receive_message = _sqs_receive
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = lambda self, queue_name, message: True


def sqs_queue_state(account: str, region: str, name: str, enough: int | None = None) -> tuple[int, float | None]:
    """(messages a ReceiveMessage could take now, the earliest runtime-clock time at which one that
    is delayed or in flight becomes receivable, None if none), without receiving anything. With
    ``enough``, the count stops there (and the time is not computed: None)."""
    now, ready, later = _sqs_now_ms(), 0, None
    for message in sqs_backends[account][region].get_queue(name)._messages:
        at = message.visible_at if message.visible_at > message.delayed_until else message.delayed_until
        if at <= now:
            ready += 1
            if ready == enough:
                return ready, None
        elif later is None or at < later:
            later = at
    return ready, None if later is None or enough is not None else later / 1000.0


def sqs_messages(account: str, region: str, name: str) -> list[dict]:
    """Every message a queue holds (in flight and delayed ones too), oldest first, as
    {"id", "body", "attributes", "receive_count", "sent"}: a look that changes nothing."""
    return [{"id": m.id, "body": m.body, "attributes": dict(m.message_attributes),
             "receive_count": m.approximate_receive_count, "sent": m.sent_timestamp / 1000.0}
            for m in sqs_backends[account][region].get_queue(name)._messages]

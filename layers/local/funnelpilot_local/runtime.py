"""Run template.yaml on moto: tables, bus, rules, secrets, SES and state machines are
created from the template; HTTP routes, EventBridge targets, DynamoDB stream and SQS event
sources and Lambda invokes from Step Functions are dispatched to the real handlers in
this process.

    with Runtime(speed=86400) as rt:          # one simulated day per real second
        rt.http("POST", "/signup", json={...})
        rt.settle()                           # deliver events, let executions finish

    with Runtime(stepped=True, start=...) as rt:  # deterministic: time moves only by rt.advance()
        rt.http(...); rt.settle(); rt.advance(3600)

How it maps to AWS: see README.md ("Local runtime").
"""
import base64
import copy
import hashlib
import heapq
import importlib.util
import io
import json
import os
import queue
import threading
import time
import uuid
import zipfile
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from funnelpilot_local import aws_rules
from funnelpilot_local.api_destinations import ApiDestinations
from funnelpilot_local.aws_rules import Rules, apigateway, cloudformation, dynamodb, events, lambda_, principal, ses, sms
from funnelpilot_local.aws_rules import sqs as sqs_rules
from funnelpilot_local.template import ACCOUNT, REGION, Template

ROOT = Path(__file__).resolve().parents[3]
_HEADERS = BytesHeaderParser()  # flush_outbox reads one header of each email: its body is not parsed
LOCAL_SECRET = "local-development-secret-do-not-use-in-aws"
# Routes with ``Auth: {Authorizer: AWS_IAM}`` (SigV4 on AWS) take this key in ``x-api-key`` locally.
LOCAL_ADMIN_KEY = "local-admin-key"
# SMS are on locally (template default: off): this phone number, answered by aws_rules.sms
LOCAL_SMS_ORIGINATION = f"arn:aws:sms-voice:{REGION}:{ACCOUNT}:phone-number/phone-00000000000000000000000000000001"
ASYNC_RETRY_WAIT = 60.0  # seconds: Lambda retries an async event 1 minute after a function error, then 2
SQS_START_BATCHES, SQS_RAMP_PER_SECOND, SQS_MAX_BATCHES = 5, 300 / 60, 1000  # Lambda's SQS poller scaling
_CLIENTS: dict[str, object] = {}  # Runtime.client
# Stacks built in this process (Runtime._build): key -> (moto backends, what the build set on the runtime)
_STACKS: OrderedDict[str, tuple[dict, dict]] = OrderedDict()
_STACKS_KEPT = 4  # the tests' default stack and a few variants
_OWN = (object(), object(), object())  # Runtime._own
# The runtime's attributes the build sets (besides the template's physical names and attributes, and
# the API destinations); tests/test_stack_reuse.py fails when the build sets one missing here.
_BUILT = ("role_arn", "ses_identities", "policies", "functions", "_env", "sns_subscribers", "routes", "schedules",
          "stream_mappings", "queue_mappings", "_retries", "_dead_letter_queues")


@dataclass
class Route:
    method: str
    path: str
    function: str
    auth: str | None = None

    def match(self, method: str, path: str) -> dict | None:
        if self.method not in (method, "ANY"):
            return None
        want, got = self.path.strip("/").split("/"), path.strip("/").split("/")
        params = {}
        for i, part in enumerate(want):
            if part.startswith("{") and part.endswith("+}"):
                params[part[1:-2]] = "/".join(got[i:])
                return params
            if i >= len(got):
                return None
            if part.startswith("{") and part.endswith("}"):
                if not got[i]:
                    return None
                params[part[1:-1]] = got[i]
            elif part != got[i]:
                return None
        return params if len(got) == len(want) else None


@dataclass
class Function:
    logical_id: str
    module_path: Path
    handler_name: str
    env: dict
    module: object = None

    @property
    def handler(self):
        if self.module is None:
            spec = importlib.util.spec_from_file_location(f"fp_fn_{self.logical_id}", self.module_path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.module = module
        return getattr(self.module, self.handler_name)


@dataclass
class StreamMapping:
    """A function's ``DynamoDB`` event in template.yaml: a Lambda event source mapping on a
    table's stream (one shard locally). ``batches`` holds the batch being retried, then the
    halves of a bisected one: the shard waits for them, as on AWS."""

    function: str
    stream_arn: str
    shard_id: str
    iterator: str
    batch_size: int
    filters: list  # predicates, one per FilterCriteria filter (ORed); none: every record
    retries: int  # MaximumRetryAttempts
    bisect: bool  # BisectBatchOnFunctionError
    on_failure: str | None  # SQS ARN of DestinationConfig.OnFailure
    batches: deque = field(default_factory=deque)  # (records, failed invocations so far)

    def matches(self, record: dict) -> bool:
        return not self.filters or any(f(record) for f in self.filters)


@dataclass
class QueueMapping:
    """A function's ``SQS`` event in template.yaml: Lambda's poller on a queue (aws_rules.sqs has
    its settings). ``held``: simulated times at which its finished invocations free their slot (at
    least ``lambda_.HOLD`` after they began, as the account's concurrency counts them), so that no
    more than :meth:`cap` batches run in any instant; ``peak`` is the most that did."""

    name: str  # Function.EventId
    function: str
    queue_arn: str
    queue_url: str
    queue_name: str
    batch_size: int
    window: int  # MaximumBatchingWindowInSeconds
    max_concurrency: int | None  # ScalingConfig.MaximumConcurrency
    report_failures: bool  # FunctionResponseTypes: [ReportBatchItemFailures]
    enabled: bool
    visibility: int  # the queue's VisibilityTimeout
    filters: list  # predicates, one per FilterCriteria filter (ORed); none: every message
    held: list = field(default_factory=list)  # heap
    gathering_since: float | None = None  # a batching window opened (fewer than batch_size messages seen)
    active_since: float | None = None  # the queue had messages from then on: Lambda's scaling ramp
    throttled: tuple | None = None  # (records, retry until): a batch the account's concurrency refused
    invocations: int = 0
    peak: int = 0

    def cap(self, now: float) -> int:
        """Batches that may run at once: Lambda starts a busy queue at 5 and adds up to 300 a minute, to
        MaximumConcurrency or 1,000 (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html)."""
        busy = now - self.active_since + 1e-6 if self.active_since else 0  # 1e-6: epoch seconds are floats
        return min(self.max_concurrency or SQS_MAX_BATCHES, int(SQS_START_BATCHES + SQS_RAMP_PER_SECOND * busy))

    def matches(self, record: dict) -> bool:
        """FilterCriteria match the record with its body parsed when it is JSON (Lambda's rule)."""
        if not self.filters:
            return True
        try:
            body = json.loads(record["body"])
        except ValueError:
            body = record["body"]
        return any(f({**record, "body": body}) for f in self.filters)


class LambdaContext:
    def __init__(self, name: str):
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.memory_limit_in_mb = 256
        self.aws_request_id = uuid.uuid4().hex
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class Runtime:
    """One local funnelpilot stack. Use as a context manager (starts and stops moto)."""

    def __init__(self, root: Path = ROOT, *, speed: float = 86_400.0, state_dir: Path | None = None,
                 public_url: str = "http://127.0.0.1:3000", log_level: str = "WARNING",
                 parameters: dict | None = None, stepped: bool = False, start: float | None = None,
                 rules: Rules | None = None, stack_name: str = "funnelpilot", template: Path | None = None):
        """``stack_name`` is ``AWS::StackName``; ``template`` a template file other than
        ``root/template.yaml`` (its paths stay relative to ``root``)."""
        self.root = Path(root)
        self.rules = rules or Rules()  # strict mode: what AWS enforces and moto does not (aws_rules)
        self.denied: list = []  # every call strict IAM refused (aws_rules.iam.Denial); tests assert none
        self.policies = None  # the template's IAM roles as SAM generates them (aws_rules.iam.Policies)
        self.ses_identities: set[str] = set()  # verified SES identities (addresses and domains)
        self.speed = 1.0 if stepped else speed
        self.stepped = stepped
        self.start_time = start
        self.scheduler = None
        self.invoke_hook = None  # (function, call) -> result: lets the cost meter time every invocation
        self.state_dir = Path(state_dir or self.root / ".local")
        self.outbox = self.state_dir / "outbox"
        self.api_destinations = ApiDestinations(self.state_dir / "outbox-webhooks")  # webhooks (api_destinations)
        self.public_url = public_url
        self.log_level = log_level
        self.template = Template.load(self.root, {"PublicUrl": public_url, "SmsOriginationIdentity": LOCAL_SMS_ORIGINATION,
                                                  **(parameters or {})},
                                      stack_name=stack_name, path=template)
        self._template_file = template or self.root / "template.yaml"  # read again by redeploy()
        self.admin_key = LOCAL_ADMIN_KEY
        self.sms = sms.Sms(self)  # End User Messaging SMS, which moto lacks: .local/outbox-sms/, opt-out list
        self.sns_subscribers: dict[str, list[str]] = {}  # topic ARN -> functions with an SNS event on it
        self.functions: dict[str, Function] = {}
        self.routes: list[Route] = []
        self.schedules: list[dict] = []  # template Schedule/ScheduleV2 events, fired by fire_schedules()
        self.stream_mappings: list[StreamMapping] = []  # template DynamoDB events, polled by pump()
        self.queue_mappings: list[QueueMapping] = []  # template SQS events, polled by pump()
        self._api_schedule_last: dict[str, float] = {}
        self._schedule_answers: dict[tuple, dict] = {}  # moto_adapter.schedule_versions version -> GetSchedule
        self.dead_letters: list[dict] = []
        self.delivered: list[tuple[str, dict]] = []  # (target ARN, input) of every async delivery made
        self._retries: dict[str, int] = {}  # target ARN -> async retries before dead-lettering
        self._dead_letter_queues: dict[str, str] = {}  # target ARN -> SQS ARN (from template.yaml)
        self.errors: list[str] = []
        self._deliveries: queue.Queue = queue.Queue()  # (target ARN, input, attempt), due now
        self._delayed: list = []  # heap (due, seq, target ARN, input, attempt, throttles, first try): throttled
        self._delayed_seq = 0
        self.concurrency = lambda_.Concurrency(self.rules.lambda_concurrency, self.rules.seed)
        self.bus_faults = events.Events(self.rules.seed, self.rules.duplicate_rate, self.rules.put_events_failure_rate)
        self.route_throttle = apigateway.RouteThrottle(self.template, enabled=self.rules.api_throttling)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._outbox_seen = 0  # moto's SES messages flushed (moto_adapter.sent_emails_since)
        self._mock = None
        self._env: dict[str, tuple[str, str]] = {}  # env var -> (value, first function setting it)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Runtime":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                           "AWS_REGION": REGION}.items():
            os.environ[key] = value
        from moto import mock_aws

        from funnelpilot import clock
        from funnelpilot_local import moto_adapter

        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True},
                                      "lambda": {"use_docker": False}})
        self._mock.start()
        aws_rules.install(self._rule_families())
        moto_adapter.install(self.invoke, self._deliver)
        moto_adapter.keep_programs_in(self.root / ".local" / "programs")  # parsed state machines, for later processes
        self.scheduler = moto_adapter.Scheduler() if self.stepped else None
        moto_adapter.use_virtual_time(self.scheduler)
        clock.configure(speed=self.speed, start=self.start_time, stepped=self.stepped)
        self.outbox.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except Exception:  # a stack that cannot be built (aws_rules.cloudformation): leave nothing running
            self.stop()
            raise
        from aws_lambda_powertools.utilities.parameters.base import DEFAULT_PROVIDERS

        from funnelpilot import aws, tokens
        from funnelpilot.config import config
        from funnelpilot.sending import pace

        config.cache_clear()  # settings are read from the environment the template just set
        tokens._key.cache_clear()  # the signing key of this stack (SIGNING_KEY_PARAMETER)
        aws.clear_parameters()  # and its events key
        pace.clear_cache()  # its SES quota
        for provider in DEFAULT_PROVIDERS.values():  # a new stack: cold starts (each keeps its client)
            provider.clear_cache()

    def stop(self) -> None:
        from funnelpilot_local import moto_adapter

        if self._mock is None:
            return
        sfn = self.client("stepfunctions")
        running = [ex["executionArn"] for arn in self.state_machine_arns()
                   for ex in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]]
        for arn in running:
            try:
                sfn.stop_execution(executionArn=arn, cause="local runtime stopped")
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        if running:
            time.sleep(0.05)  # their threads end before moto stops
        if self.stepped:
            from funnelpilot import clock

            moto_adapter.use_virtual_time(None)  # parked threads of this runtime stay parked (daemons)
            clock.configure()
        aws_rules.uninstall()
        moto_adapter.uninstall()
        self._mock.stop()
        self._mock = None

    def _rule_families(self) -> list:
        """The strict-mode rules this runtime enforces (funnelpilot_local.aws_rules)."""
        from funnelpilot_local.aws_rules import iam, stepfunctions

        families = [self.concurrency, self.bus_faults, self.route_throttle, stepfunctions.StepFunctions(self.rules)]
        if self.rules.iam:
            families.append(iam.IamRule(self))
        # after IAM: a request is authorised, then validated
        families += [dynamodb.DynamoDB(self.rules), ses.Ses(self.rules, self.template), self.sms]
        return families + ([sqs_rules.Sqs(self.rules)] if self.rules.sqs_limits else [])

    def role_of(self, logical_id: str) -> str:
        """The IAM role a function or state machine runs as (the one SAM generates for it)."""
        return self.policies.role_of(logical_id) or f"arn:aws:iam::{ACCOUNT}:role/{logical_id}Role"

    def client(self, service: str):
        """One boto3 client per service and process, shared by every runtime: creating one
        costs ~50 ms (moto starts each runtime with a new boto3 session, which loads the
        service's model again), half of a runtime's start; a client made under an earlier
        mock still reaches moto (its stubber is a handler of every client)."""
        import boto3

        if service not in _CLIENTS:
            _CLIENTS[service] = boto3.client(service, region_name=REGION)
        return _CLIENTS[service]

    # ------------------------------------------------------------------ resources
    def _build(self) -> None:
        """Create the stack's resources, or restore them: the first build of a stack in this process is
        snapshotted (moto's backends and what the build set on the runtime) and every later start of the
        same stack (template, state machine definitions, parameters, rules, speed) restores a deep copy,
        about 10 ms instead of 0.35 s of API calls: a fresh stack, exactly as built, for each test."""
        from funnelpilot_local import moto_adapter

        key = self._stack_key()
        if key not in _STACKS:
            self._create_resources()
            own = {id(obj): marker for obj, marker in zip(self._own(), _OWN)}
            _STACKS[key] = (moto_adapter.snapshot_backends(), copy.deepcopy(self._built(), own))
            while len(_STACKS) > _STACKS_KEPT:
                _STACKS.popitem(last=False)
            return
        _STACKS.move_to_end(key)
        backends, built = _STACKS[key]
        moto_adapter.restore_backends(backends)
        built = copy.deepcopy(built, {id(marker): obj for obj, marker in zip(self._own(), _OWN)})
        self.template.physical, self.template.attributes = built.pop("physical"), built.pop("attributes")
        self.api_destinations.destinations = built.pop("api_destinations")
        for name, value in built.items():
            setattr(self, name, value)
        os.environ.update({key: value for key, (value, _) in self._env.items()})

    def _stack_key(self) -> str:
        """What a build depends on: the template, the definitions it points to, parameters, rules."""
        t = self.template
        uris = sorted({t.properties(lid)["DefinitionUri"] for lid in t.of_type("AWS::Serverless::StateMachine")})
        definitions = {uri: hashlib.sha256((self.root / uri).read_bytes()).hexdigest() for uri in uris}
        return hashlib.sha256(json.dumps([str(self.root), t.doc, t.parameters, t.stack_name, self.speed, self.log_level,
                                          repr(self.rules), definitions], sort_keys=True, default=str).encode()).hexdigest()

    def _built(self) -> dict:
        return {"physical": self.template.physical, "attributes": self.template.attributes,
                "api_destinations": self.api_destinations.destinations, **{name: getattr(self, name) for name in _BUILT}}

    def _own(self) -> tuple:
        """What the build products may refer to but belongs to this runtime: a snapshot holds a marker
        (_OWN) in its place, and a restore puts the restoring runtime's there."""
        return self, self.template, self.rules

    def _create_resources(self) -> None:
        t = self.template
        iam = self.client("iam")
        self.role_arn = iam.create_role(RoleName="funnelpilot-local",
                                        AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        cloudformation.check_alarm_actions(t)
        self._put_named_parameters()
        for lid in t.of_type("AWS::DynamoDB::Table"):
            self._create_table(lid, t.resolve(t.properties(lid)))
        for lid in t.of_type("AWS::SSM::Parameter"):
            props = t.resolve(t.properties(lid))
            self.client("ssm").put_parameter(Name=props["Name"], Type=props.get("Type", "String"),
                                             Value=props["Value"])
            t.physical[lid] = props["Name"]
        for lid in t.of_type("AWS::Events::EventBus"):
            name = t.resolve(t.properties(lid))["Name"]
            self.client("events").create_event_bus(Name=name)
            t.physical[lid] = name
            t.attributes[(lid, "Arn")] = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{name}"
            t.attributes[(lid, "Name")] = name
        self._create_queues()
        for lid in t.of_type("AWS::SNS::Topic"):
            name = t.resolve(t.properties(lid)).get("TopicName", lid)
            t.physical[lid] = self.client("sns").create_topic(Name=name)["TopicArn"]
        for lid in t.of_type("AWS::SMSVOICE::ConfigurationSet"):  # answered by aws_rules.sms, from the template
            t.physical[lid] = t.resolve(t.properties(lid))["ConfigurationSetName"]
        ses = self.client("ses")
        for lid in t.of_type("AWS::SES::ConfigurationSet"):
            ses.create_configuration_set(ConfigurationSet={"Name": lid})
            t.physical[lid] = lid
        existing = self.rules.ses_existing_identities
        identities = {lid: t.resolve(t.properties(lid))["EmailIdentity"] for lid in t.of_type("AWS::SES::EmailIdentity")}
        for lid, identity in identities.items():
            cloudformation.already_exists(lid, identity, existing)
        for identity in (*existing, *identities.values()):  # verified identities of the account
            if "@" in identity:
                ses.verify_email_identity(EmailAddress=identity)
            else:
                ses.verify_domain_identity(Domain=identity)
        for lid, identity in identities.items():  # a custom MAIL FROM domain, as the template asks
            if mail_from := t.resolve(t.properties(lid)).get("MailFromAttributes"):
                ses.set_identity_mail_from_domain(Identity=identity, MailFromDomain=mail_from["MailFromDomain"],
                                                  BehaviorOnMXFailure={"USE_DEFAULT_VALUE": "UseDefaultValue"}.get(
                                                      mail_from["BehaviorOnMxFailure"], "RejectMessage"))
        t.physical.update(identities)
        self.ses_identities = {i.lower() for i in (*existing, *identities.values())}
        for lid in t.of_type("AWS::IAM::Role"):
            t.physical[lid] = lid
            t.attributes[(lid, "Arn")] = f"arn:aws:iam::{ACCOUNT}:role/{lid}"
        self._create_api_destinations()
        for lid in t.of_type("AWS::Scheduler::ScheduleGroup"):
            name = t.resolve(t.properties(lid)).get("Name", lid)
            self.client("scheduler").create_schedule_group(Name=name)
            t.physical[lid] = name
            t.attributes[(lid, "Arn")] = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule-group/{name}"
        for lid in t.of_type("AWS::Logs::LogGroup"):  # the functions' LoggingConfig names them
            props = t.resolve(t.properties(lid))
            self.client("logs").create_log_group(logGroupName=props["LogGroupName"])
            self.client("logs").put_retention_policy(logGroupName=props["LogGroupName"],
                                                     retentionInDays=int(props["RetentionInDays"]))
            t.physical[lid] = props["LogGroupName"]
        for lid in t.of_type("AWS::S3::Bucket"):  # CloudFormation names them <stack>-<logical id>-<suffix>
            name = f"{t.stack_name}-{lid}".lower()
            self.client("s3").create_bucket(Bucket=name)
            t.physical[lid] = name
            t.attributes[(lid, "Arn")] = f"arn:aws:s3:::{name}"
        for lid in t.of_type("AWS::Serverless::HttpApi"):
            t.physical[lid] = "local"
        for lid in t.of_type("AWS::Serverless::LayerVersion"):
            t.physical[lid] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{lid}:1"
        functions = t.of_type("AWS::Serverless::Function")
        for lid in functions:
            t.physical[lid] = lid
            t.attributes[(lid, "Arn")] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{lid}"
        machines = t.of_type("AWS::Serverless::StateMachine")
        for lid in machines:
            self._name_state_machine(lid)
        from funnelpilot_local.aws_rules.iam import Policies

        self.policies = Policies(t)
        for lid in functions:
            self._create_function(lid)
        for lid in machines:
            self._create_state_machine(lid)
        for lid in functions:
            self._async_config(lid, t.resolve(t.properties(lid)))
            self._wire_events(lid, t.properties(lid).get("Events", {}), t.attributes[(lid, "Arn")])
        for lid in machines:
            self._wire_events(lid, t.properties(lid).get("Events", {}), t.physical[lid])
        for lid in t.of_type("AWS::Events::Rule"):
            props = t.resolve(t.properties(lid))
            self._put_rule(lid, props.get("EventBusName", "default"), props["EventPattern"], props["Targets"])
            for target in props["Targets"]:
                if target["Arn"] in self.api_destinations.destinations:
                    self.api_destinations.target(target)

    def _create_queues(self) -> None:
        """The template's queues with their attributes (VisibilityTimeout, DelaySeconds, FIFO...); the
        redrive policies once every queue exists (one names its dead-letter queue by ARN)."""
        t, sqs = self.template, self.client("sqs")
        queues = t.of_type("AWS::SQS::Queue")
        for lid in queues:
            props = {k: t.resolve(v) for k, v in t.properties(lid).items() if k != "RedrivePolicy"}
            name = props.get("QueueName", f"{lid}.fifo" if props.get("FifoQueue") else lid)
            attributes = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in props.items()
                          if k in QUEUE_ATTRIBUTES}
            t.physical[lid] = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            t.attributes[(lid, "Arn")] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
            t.attributes[(lid, "QueueName")] = name
        for lid in queues:
            if redrive := t.resolve(t.properties(lid).get("RedrivePolicy")):
                sqs.set_queue_attributes(QueueUrl=t.physical[lid], Attributes={"RedrivePolicy": json.dumps(redrive)})

    def _create_api_destinations(self) -> None:
        """Connections and API destinations: kept by the runtime, which calls the endpoints itself
        (funnelpilot_local.api_destinations); moto holds none of them."""
        t = self.template
        connections = {}
        for lid in t.of_type("AWS::Events::Connection"):
            arn = f"arn:aws:events:{REGION}:{ACCOUNT}:connection/{lid}/local"
            t.physical[lid], t.attributes[(lid, "Arn")] = lid, arn
            connections[arn] = t.resolve(t.properties(lid))
        for lid in t.of_type("AWS::Events::ApiDestination"):
            arn = f"arn:aws:events:{REGION}:{ACCOUNT}:api-destination/{lid}/local"
            t.physical[lid], t.attributes[(lid, "Arn")] = lid, arn
            props = t.resolve(t.properties(lid))
            self.api_destinations.add(arn, props, connections[props["ConnectionArn"]])

    def _put_named_parameters(self) -> None:
        """The SSM parameters the template takes by name (``AWS::SSM::Parameter::Name``: the signing key).
        CloudFormation cannot create a SecureString, so the operator puts it before the first deploy and
        CloudFormation refuses a name the account does not hold; here the runtime puts each as a SecureString
        (``Rules.existing_parameters`` None) or refuses one the account was said not to have."""
        t = self.template
        named = {t.parameters[name]: name for name, spec in t.doc.get("Parameters", {}).items()
                 if spec.get("Type") == "AWS::SSM::Parameter::Name"}
        held = named if self.rules.existing_parameters is None else self.rules.existing_parameters
        for value in held:
            self.client("ssm").put_parameter(Name=value, Type="SecureString", Value=LOCAL_SECRET)
        for value, name in named.items():
            if value not in held:
                raise cloudformation.StackError(
                    f"Parameter validation failed: parameter value {value} for parameter name {name} does not exist "
                    "(create it with `aws ssm put-parameter --type SecureString`, README \"Deploy to AWS\")")

    def _create_table(self, lid: str, props: dict) -> None:
        name = props.get("TableName", lid)
        kwargs = {k: props[k] for k in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes",
                                        "LocalSecondaryIndexes") if k in props}
        if "StreamSpecification" in props:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        table = self.client("dynamodb").create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                                                     **kwargs)["TableDescription"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            self.client("dynamodb").update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self.template.physical[lid] = name
        self.template.attributes[(lid, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        if "LatestStreamArn" in table:
            self.template.attributes[(lid, "StreamArn")] = table["LatestStreamArn"]

    def _create_function(self, lid: str) -> None:
        props = self.template.resolve(self.template.properties(lid))
        module, _, attr = props["Handler"].rpartition(".")
        env = {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
        env.setdefault("POWERTOOLS_LOG_LEVEL", self.log_level)
        env["POWERTOOLS_METRICS_DISABLED"] = "true"
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
        env["CONTENT_DIR"] = str(self.root / "infra")
        for key, value in env.items():
            first = self._env.setdefault(key, (value, lid))
            if first[0] != value:
                raise ValueError(f"template.yaml: env {key} differs between {first[1]} and {lid};"
                                 " the local runtime runs all functions in one process")
            os.environ[key] = value
        path = self.root / props["CodeUri"] / (module.replace(".", "/") + ".py")
        self.functions[lid] = Function(lid, path, attr, env)
        buf = io.BytesIO()
        zipfile.ZipFile(buf, "w").writestr("app.py", "")
        self.client("lambda").create_function(FunctionName=lid, Runtime="python3.12", Role=self.role_arn,
                                              Handler=props["Handler"], Code={"ZipFile": buf.getvalue()})

    def _name_state_machine(self, lid: str) -> None:
        t = self.template
        name = t.resolve(t.properties(lid).get("Name", lid))
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"
        t.physical[lid] = arn
        t.attributes[(lid, "Arn")] = arn
        t.attributes[(lid, "Name")] = name

    def _definition(self, lid: str) -> str:
        t = self.template
        props = t.properties(lid)
        subs = {k: str(v) for k, v in t.resolve(props.get("DefinitionSubstitutions", {})).items()}
        text = (self.root / props["DefinitionUri"]).read_text()
        for key, value in subs.items():
            text = text.replace("${" + key + "}", value)
        definition = unbatch_items(json.loads(text))
        return json.dumps(compress_waits(definition, self.speed) if self.speed != 1 else definition)

    def _create_state_machine(self, lid: str) -> None:
        self.client("stepfunctions").create_state_machine(
            name=self.template.attributes[(lid, "Name")], definition=self._definition(lid), roleArn=self.role_of(lid))

    def redeploy(self) -> None:
        """What `sam deploy` of a changed template.yaml does to the funnels (README "Changing a live
        funnel"): each state machine gets its new definition (UpdateStateMachine: running executions
        keep the one they started with), a new one is created, one gone from the template is deleted
        (its running executions stop at their next transition on AWS: stopped here), and the functions'
        EventBridge rules are put again (a new pattern or input applies from the next event; a rule
        gone is deleted). Tables, functions and routes stay as they are; the functions start cold (the
        content they cached, such as funnel files, is read again)."""
        from funnelpilot import funnel_spec
        from funnelpilot.channels import emails
        from funnelpilot_local.aws_rules.iam import Policies
        from funnelpilot_local.template import load_yaml

        funnel_spec.load.cache_clear()
        emails.environment.cache_clear()

        t, sfn, events = self.template, self.client("stepfunctions"), self.client("events")
        before, rules_before = set(t.of_type("AWS::Serverless::StateMachine")), self._function_rules()
        t.doc = load_yaml(self._template_file)
        machines = t.of_type("AWS::Serverless::StateMachine")
        for lid in before - set(machines):
            arn = t.physical.pop(lid)
            for ex in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]:
                sfn.stop_execution(executionArn=ex["executionArn"], cause="state machine deleted")
            sfn.delete_state_machine(stateMachineArn=arn)
        for lid in set(machines) - before:
            self._name_state_machine(lid)
        self.policies = Policies(t)
        for lid in machines:
            if lid in before:
                sfn.update_state_machine(stateMachineArn=t.physical[lid], definition=self._definition(lid))
            else:
                self._create_state_machine(lid)
        rules = self._function_rules()
        for name, (lid, bus) in rules_before.items():
            if name not in rules:
                events.remove_targets(Rule=name, EventBusName=bus, Ids=[lid])
                events.delete_rule(Name=name, EventBusName=bus)
        for lid in t.of_type("AWS::Serverless::Function"):
            wired = {k: e for k, e in t.properties(lid).get("Events", {}).items() if e["Type"] == "EventBridgeRule"}
            self._wire_events(lid, wired, t.attributes[(lid, "Arn")])

    def _function_rules(self) -> dict[str, tuple[str, str]]:
        """rule name -> (function, bus) of the functions' EventBridgeRule events (_wire_events names them)."""
        t = self.template
        return {f"{lid}{eid}": (lid, t.resolve(e.get("Properties", {}).get("EventBusName", "default")))
                for lid in t.of_type("AWS::Serverless::Function")
                for eid, e in t.properties(lid).get("Events", {}).items() if e["Type"] == "EventBridgeRule"}

    def _async_config(self, lid: str, props: dict) -> None:
        """A function's asynchronous-invocation settings: retries and where failures go
        (EventInvokeConfig OnFailure SQS destination, else its SQS DeadLetterQueue)."""
        arn = self.template.attributes[(lid, "Arn")]
        invoke_config = props.get("EventInvokeConfig", {})
        if "MaximumRetryAttempts" in invoke_config:
            self._retries[arn] = int(invoke_config["MaximumRetryAttempts"])
        on_failure = invoke_config.get("DestinationConfig", {}).get("OnFailure", {})
        dlq = props.get("DeadLetterQueue", {})
        if on_failure.get("Type") == "SQS" and on_failure.get("Destination"):
            self._dead_letter_queues[arn] = on_failure["Destination"]
        elif dlq.get("Type") == "SQS":
            self._dead_letter_queues[arn] = dlq["TargetArn"]

    def _wire_events(self, lid: str, events: dict, target_arn: str) -> None:
        t = self.template
        for event_id, event in events.items():
            props = t.resolve(event.get("Properties", {}))
            kind = event["Type"]
            if kind == "HttpApi":
                self.routes.append(Route(props.get("Method", "ANY").upper(), props["Path"], lid,
                                         (props.get("Auth") or {}).get("Authorizer")))
            elif kind == "EventBridgeRule":
                target = {"Id": lid, "Arn": target_arn}
                for key in ("InputTransformer", "Input", "InputPath"):
                    if key in props:
                        target[key] = props[key]
                self._put_rule(f"{lid}{event_id}", props.get("EventBusName", "default"), props["Pattern"], [target])
                if "Arn" in props.get("DeadLetterConfig", {}):  # the function's own DLQ takes precedence
                    self._dead_letter_queues.setdefault(target_arn, props["DeadLetterConfig"]["Arn"])
            elif kind == "SNS":
                self.sns_subscribers.setdefault(props["Topic"], []).append(target_arn)
            elif kind == "DynamoDB":
                self.stream_mappings.append(self._stream_mapping(f"{lid}.{event_id}", lid, props))
            elif kind == "SQS":
                self.queue_mappings.append(self._queue_mapping(f"{lid}.{event_id}", lid, props))
            elif kind in ("Schedule", "ScheduleV2"):
                if props.get("Enabled") is False or props.get("State") == "DISABLED":
                    continue
                self.schedules.append({"function": lid, "arn": target_arn, "kind": kind,
                                       "name": props.get("Name", f"{lid}{event_id}"), "logical_id": f"{lid}{event_id}",
                                       "expression": props.get("Schedule") or props.get("ScheduleExpression"),
                                       "input": props.get("Input"), "last": None})
            else:
                raise ValueError(f"template.yaml: {lid}.{event_id}: event type {kind} has no local equivalent")

    def _stream_mapping(self, name: str, lid: str, props: dict) -> StreamMapping:
        from funnelpilot_local import moto_adapter

        if props.get("MaximumRetryAttempts", -1) < 0:
            raise ValueError(f"template.yaml: {name}: set MaximumRetryAttempts; the local runtime retries a failed"
                             " batch at once and cannot wait for its records to expire (-1, the default)")
        streams = self.client("dynamodbstreams")
        shard = streams.describe_stream(StreamArn=props["Stream"])["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(StreamArn=props["Stream"], ShardId=shard,
                                              ShardIteratorType=props["StartingPosition"])["ShardIterator"]
        return StreamMapping(
            lid, props["Stream"], shard, iterator, int(props.get("BatchSize", 100)),
            [moto_adapter.event_filter(f["Pattern"], plain=True) for f in props.get("FilterCriteria", {}).get("Filters", [])],
            int(props["MaximumRetryAttempts"]), bool(props.get("BisectBatchOnFunctionError", False)),
            props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination"))

    def _queue_mapping(self, name: str, lid: str, props: dict) -> QueueMapping:
        """An SQS event source mapping, refused as Lambda refuses it (aws_rules.sqs.event_source_mapping)."""
        from funnelpilot_local import moto_adapter

        t = self.template
        queue = next((q for q in t.of_type("AWS::SQS::Queue") if t.attributes[(q, "Arn")] == props["Queue"]), None)
        if queue is None:
            raise cloudformation.StackError(f"template.yaml: {name}: Queue {props['Queue']} is not a queue of this template")
        settings = sqs_rules.event_source_mapping(
            name, props, t.resolve(t.properties(queue)), t.resolve(t.properties(lid)).get("Timeout"), self.role_of(lid),
            self.policies.allowed if self.rules.iam else None)
        return QueueMapping(name, lid, props["Queue"], t.physical[queue], t.attributes[(queue, "QueueName")],
                            settings["batch_size"], settings["window"], settings["max_concurrency"],
                            settings["report_failures"], settings["enabled"], settings["visibility"],
                            [moto_adapter.event_filter(f) for f in settings["filters"]])

    def _put_rule(self, name: str, bus: str, pattern: dict, targets: list[dict]) -> None:
        events = self.client("events")
        events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
        events.put_targets(Rule=name, EventBusName=bus,
                           Targets=[{k: v for k, v in tg.items() if k in ("Id", "Arn", "Input", "InputPath",
                                                                          "InputTransformer")} for tg in targets])

    # ------------------------------------------------------------------ dispatch
    def invoke(self, function: str, payload: dict):
        """Synchronous invoke (what a Step Functions Task or a direct call does)."""
        fn = self.functions[function]
        with self.concurrency.slot(function):  # none left: TooManyRequestsException, as Lambda's Invoke
            with principal.acting_as(self.role_of(function)):
                if self.invoke_hook is not None:
                    return self.invoke_hook(function, lambda: fn.handler(payload, LambdaContext(function)))
                return fn.handler(payload, LambdaContext(function))

    def _deliver(self, target_arn: str, payload: dict, event_id: str | None = None) -> None:
        """Queue an asynchronous delivery; an EventBridge rule's (``event_id`` given) may be
        made twice (at-least-once, ``Rules.duplicate_rate``)."""
        copies = self.bus_faults.copies(event_id, target_arn) if event_id else 1
        with self._lock:
            self._in_flight += copies
        for _ in range(copies):
            self._deliveries.put((target_arn, payload, 0))

    def publish_sns(self, topic_arn: str, message: str) -> None:
        """A message on an SNS topic: one asynchronous delivery per subscribed function, in the
        event shape Lambda receives from SNS (moto's SNS would not invoke them)."""
        from funnelpilot import clock

        for target in self.sns_subscribers.get(topic_arn, []):
            record = {"EventSource": "aws:sns", "EventVersion": "1.0", "EventSubscriptionArn": f"{topic_arn}:local",
                      "Sns": {"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic_arn,
                              "Subject": None, "Message": message, "Timestamp": clock.iso(), "MessageAttributes": {}}}
            self._deliver(target, {"Records": [record]})

    # ------------------------------------------------------------------ schedules
    def fire_schedules(self) -> int:
        """Fire every schedule occurrence due on the simulated clock: template Schedule /
        ScheduleV2 events and Scheduler schedules created through the API (one-time
        ``at(...)`` ones are deleted after firing when ActionAfterCompletion is DELETE)."""
        from funnelpilot import clock
        from funnelpilot_local import schedules

        now, fired = clock.now(), 0
        for sched in self.schedules:
            last = sched["last"] if sched["last"] is not None else now
            for at in schedules.occurrences(sched["expression"], last, now):
                arn = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/{sched['name']}"
                if sched["kind"] == "ScheduleV2":
                    payload = json.loads(schedules.scheduler_input(sched["input"], scheduled=at, schedule_arn=arn,
                                                                   execution_id=uuid.uuid4().hex))
                elif sched["input"] is not None:
                    payload = json.loads(sched["input"])
                else:
                    payload = {"version": "0", "id": uuid.uuid4().hex, "detail-type": "Scheduled Event",
                               "source": "aws.events", "account": ACCOUNT, "time": clock.iso(at),
                               "region": REGION, "resources": [arn], "detail": {}}
                if self._schedule_may_invoke(sched):
                    self._deliver(sched["arn"], payload)
                fired += 1
                last = at
            sched["last"] = max(last, now)
        return fired + self._fire_api_schedules(now)

    def _schedule_may_invoke(self, sched: dict) -> bool:
        """A template ScheduleV2 invokes its function with the role SAM generates for it."""
        if sched["kind"] != "ScheduleV2" or not self.rules.iam:
            return True
        from funnelpilot_local.aws_rules.iam import Denial

        props = self.policies.doc["Resources"][sched["logical_id"]]["Properties"]
        role = self.policies.resolver.resolve(props["Target"]["RoleArn"])
        if self.policies.allowed(role, "lambda:InvokeFunction", sched["arn"]):
            return True
        denial = Denial(role, "lambda:InvokeFunction", sched["arn"])
        self.denied.append(denial)
        self._dead_letter(sched["arn"], {}, PermissionError(str(denial)))
        return False

    def _fire_api_schedules(self, now: float) -> int:
        from funnelpilot_local import moto_adapter, schedules

        if not moto_adapter.any_schedules(ACCOUNT, REGION):
            return 0
        scheduler, fired = self.client("scheduler"), 0
        listed = moto_adapter.schedule_versions(ACCOUNT, REGION)
        self._schedule_answers = {v: self._schedule_answers[v] for _, _, _, v in listed if v in self._schedule_answers}
        for name, group, state, version in listed:
            if state != "ENABLED":
                continue
            sched = self._schedule_answers.get(version)
            if sched is None:  # new or changed since the last look
                sched = self._schedule_answers[version] = scheduler.get_schedule(Name=name, GroupName=group)
            key = sched["Arn"]
            created = sched["CreationDate"].timestamp() if "CreationDate" in sched else now
            last = self._api_schedule_last.get(key, float("-inf") if sched["ScheduleExpression"].startswith(
                "at(") else created)
            due = schedules.occurrences(sched["ScheduleExpression"], last, now, sched.get("ScheduleExpressionTimezone"))
            for at in due:
                target = sched["Target"]
                text = schedules.scheduler_input(target.get("Input"), scheduled=at, schedule_arn=key,
                                                 execution_id=uuid.uuid4().hex)
                if ":event-bus/" in target["Arn"]:
                    params = target.get("EventBridgeParameters", {})
                    try:
                        with principal.acting_as(target["RoleArn"]):  # Scheduler puts the event as this role
                            self.client("events").put_events(Entries=[{
                                "Source": params.get("Source", "aws.scheduler"), "DetailType": params.get(
                                    "DetailType", "Scheduled Event"), "Detail": text, "EventBusName": target["Arn"]}])
                    except Exception as exc:  # noqa: BLE001 - Scheduler retries, then dead-letters
                        self._dead_letter(target["Arn"], json.loads(text), exc)
                else:
                    self._deliver(target["Arn"], json.loads(text))
                fired += 1
            if due:
                self._api_schedule_last[key] = due[-1]
                if sched["ScheduleExpression"].startswith("at(") and sched.get("ActionAfterCompletion") == "DELETE":
                    scheduler.delete_schedule(Name=name, GroupName=group)
                    self._api_schedule_last.pop(key, None)
        return fired

    def pump(self) -> int:
        """Fire due schedules, then deliver queued EventBridge matches to their targets and
        the DynamoDB streams' records to their event source mappings until neither has more;
        returns how many deliveries and stream steps."""
        self.fire_schedules()
        done = 0
        while self._deliver_one() or self._poll_streams() or self._poll_queues():
            done += 1
        return done

    def _deliver_one(self) -> bool:
        """Make one queued delivery due on the clock (False: none). A function throttled for want
        of concurrency goes back to its queue with backoff for up to 6 hours, not counted as an
        attempt; a failure is retried ``MaximumRetryAttempts`` times (a function's 1 and 2 minutes
        later, as Lambda's async queue does), then dead-lettered."""
        from funnelpilot import clock

        throttles, first = 0, None
        with self._lock:
            due = self._delayed and self._delayed[0][0] <= clock.now()
            if due:
                _, _, arn, payload, attempt, throttles, first = heapq.heappop(self._delayed)
        if not due:
            try:
                arn, payload, attempt = self._deliveries.get_nowait()
            except queue.Empty:
                return False
        if arn in self.api_destinations.destinations:
            if not self._call_api_destination(arn, payload, attempt, throttles, first):
                with self._lock:
                    self._in_flight -= 1
            return True
        try:
            if ":function:" in arn:
                self.invoke(arn.split(":function:")[-1], payload)
            elif ":sqs:" in arn:
                sqs = self.client("sqs")
                url = sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]
                sqs.send_message(QueueUrl=url, MessageBody=json.dumps(payload))
            elif ":stateMachine:" in arn:
                self.client("stepfunctions").start_execution(
                    stateMachineArn=arn, name=uuid.uuid4().hex, input=json.dumps(payload))
            else:
                raise ValueError(f"no local delivery for target {arn}")
            self.delivered.append((arn, payload))
        except Exception as exc:  # noqa: BLE001 - async delivery: retry, then dead-letter
            first = clock.now() if first is None else first
            if lambda_.is_throttle(exc) and clock.now() - first < lambda_.ASYNC_THROTTLE_MAX_AGE:
                with self._lock:
                    self._delayed_seq += 1
                    heapq.heappush(self._delayed, (clock.now() + self.concurrency.async_backoff(throttles + 1),
                                                   self._delayed_seq, arn, payload, attempt, throttles + 1, first))
                return True
            if attempt < self._retries.get(arn, 2):
                if ":function:" in arn:  # Lambda's async queue waits 1 minute, then 2, between attempts
                    with self._lock:
                        self._delayed_seq += 1
                        heapq.heappush(self._delayed, (clock.now() + ASYNC_RETRY_WAIT * (attempt + 1),
                                                       self._delayed_seq, arn, payload, attempt + 1, throttles, first))
                else:
                    self._deliveries.put((arn, payload, attempt + 1))
                return True
            self._dead_letter(arn, payload, exc)
        with self._lock:
            self._in_flight -= 1
        return True

    def _call_api_destination(self, arn: str, payload, attempt: int, throttles: int, first: float | None) -> bool:
        """One attempt at an API destination target, as EventBridge makes it (api_destinations):
        True when it is queued again for a retry; else it was delivered or dead-lettered."""
        from funnelpilot import clock

        first = clock.now() if first is None else first
        dests = self.api_destinations
        dest = dests.destinations[arn]
        if self.rules.iam and not self.policies.allowed(dest.role or "", "events:InvokeApiDestination", arn):
            from funnelpilot_local.aws_rules.iam import Denial

            denial = Denial(dest.role or "(no RoleArn)", "events:InvokeApiDestination", arn)
            self.denied.append(denial)
            self._fail_to(dest.dead_letter_queue, arn, payload, PermissionError(str(denial)))
            return False
        status, retry_after, error = dests.call(arn, payload, attempt)
        if status is not None and 200 <= status < 300:
            self.delivered.append((arn, payload))
            return False
        wait = dests.retry_in(arn, status, retry_after, attempt, clock.now() - first)
        if wait is None:
            self._fail_to(dest.dead_letter_queue, arn, payload, RuntimeError(
                f"{dest.endpoint}: {status or error} (attempt {attempt + 1}; EventBridge does not retry it further)"))
            return False
        with self._lock:
            self._delayed_seq += 1
            heapq.heappush(self._delayed, (clock.now() + wait, self._delayed_seq, arn, payload, attempt + 1,
                                           throttles, first))
        return True

    def _dead_letter(self, target_arn: str, payload: dict, exc: Exception) -> None:
        """A delivery that failed after its retries: into the target's dead-letter queue
        from template.yaml (as Lambda / EventBridge do); always reported in ``errors``."""
        self._fail_to(self._dead_letter_queues.get(target_arn), target_arn, payload, exc)

    def _fail_to(self, queue_arn: str | None, target_arn: str, payload: dict, exc: Exception) -> None:
        """Record a discarded delivery (``dead_letters``, ``errors``) and send ``payload`` to
        ``queue_arn`` (None: the template gives it no queue)."""
        self.dead_letters.append({"target": target_arn, "input": payload, "error": repr(exc)})
        self.errors.append(f"{target_arn}: {exc!r} -> {queue_arn or 'no dead-letter queue in template.yaml'}")
        if queue_arn is None:
            return
        sqs = self.client("sqs")
        sqs.send_message(QueueUrl=sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"],
                         MessageBody=json.dumps(payload), MessageAttributes={
                             "ErrorMessage": {"DataType": "String", "StringValue": repr(exc)[:1000]},
                             "TargetArn": {"DataType": "String", "StringValue": target_arn}})

    # ------------------------------------------------------------------ DynamoDB streams
    def _poll_streams(self) -> bool:
        """One step of the first event source mapping with work: retry its failed batch (the
        shard waits for it), else read the next records, drop those its FilterCriteria reject
        (as Lambda does, without invoking) and invoke the function with the rest as one batch.
        False when no mapping had anything to do."""
        return any(self._stream_step(m) for m in self.stream_mappings)

    def _stream_step(self, m: StreamMapping) -> bool:
        from funnelpilot_local import moto_adapter

        if not m.batches:
            records, m.iterator = moto_adapter.stream_records(ACCOUNT, REGION, m.iterator, m.batch_size)
            if not records:
                return False
            batch = [r for r in (lambda_stream_record(r, m.stream_arn) for r in records) if m.matches(r)]
            if not batch:
                return True
            m.batches.append((batch, 0))
        batch, failures = m.batches.popleft()
        try:
            self.invoke(m.function, {"Records": batch})
        except Exception as exc:  # noqa: BLE001 - a function error: retry, bisect, then the on-failure destination
            if lambda_.is_throttle(exc):  # not invoked: the shard waits for the next poll, no retry is used
                m.batches.appendleft((batch, failures))
                return False
            if m.bisect and len(batch) > 1:  # each half is retried on its own; splitting uses no retry
                m.batches.extendleft([(batch[len(batch) // 2:], failures), (batch[:len(batch) // 2], failures)])
            elif failures < m.retries:
                m.batches.appendleft((batch, failures + 1))
            else:
                self._stream_failure(m, batch, failures + 1, exc)
        return True

    def _stream_failure(self, m: StreamMapping, batch: list[dict], invocations: int, exc: Exception) -> None:
        """A batch that failed its retries: Lambda discards it and sends its stream position
        (not the records) to the on-failure destination, then goes on with the shard."""
        from funnelpilot import clock

        first, last = batch[0]["dynamodb"], batch[-1]["dynamodb"]
        arn = self.template.attributes[(m.function, "Arn")]
        self._fail_to(m.on_failure, arn, {
            "requestContext": {"requestId": uuid.uuid4().hex, "functionArn": arn, "condition": "RetryAttemptsExhausted",
                               "approximateInvokeCount": invocations},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0", "timestamp": clock.iso(),
            "DDBStreamBatchInfo": {
                "shardId": m.shard_id, "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"], "batchSize": len(batch), "streamArn": m.stream_arn,
                "approximateArrivalOfFirstRecord": clock.iso(first["ApproximateCreationDateTime"]),
                "approximateArrivalOfLastRecord": clock.iso(last["ApproximateCreationDateTime"])}}, exc)

    # ------------------------------------------------------------------ SQS event source mappings
    def _poll_queues(self) -> bool:
        """One poll of the first SQS event source mapping with work (False: none has any before the
        clock moves): as Lambda's poller, with the function's role, it receives up to BatchSize
        visible messages (once BatchSize are visible or the batching window has passed), deletes
        those its FilterCriteria reject, invokes the function with the rest and deletes what it
        processed: the whole batch, or all but the ``batchItemFailures`` (ReportBatchItemFailures).
        A failed message stays in flight: it comes back after the queue's visibility timeout (or the
        one the handler set), and the redrive policy moves it to its dead-letter queue after
        maxReceiveCount receives. Checked against https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html
        and https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html."""
        return any(self._queue_step(m) for m in self.queue_mappings)

    def _queue_step(self, m: QueueMapping) -> bool:
        from funnelpilot import clock
        from funnelpilot_local import moto_adapter

        if not m.enabled:
            return False
        now = clock.now()
        while m.held and m.held[0] <= now:
            heapq.heappop(m.held)
        if len(m.held) >= m.cap(now):
            return False
        if m.throttled is not None:  # Lambda retries a throttled batch until its visibility timeout ends
            records, until = m.throttled
            m.throttled = None
            if now < until:
                return self._queue_invoke(m, records)
        ready, _ = moto_adapter.sqs_queue_state(ACCOUNT, REGION, m.queue_name, enough=m.batch_size)
        if not ready:
            m.gathering_since = None
            if not m.held:  # idle: the ramp starts over
                m.active_since = None
            return False
        m.active_since = now if m.active_since is None else m.active_since
        if m.window and ready < m.batch_size:
            m.gathering_since = now if m.gathering_since is None else m.gathering_since
            if now < m.gathering_since + m.window:
                return False
        m.gathering_since = None
        sqs, received = self.client("sqs"), []
        with principal.acting_as(self.role_of(m.function)):
            while len(received) < m.batch_size:
                page = sqs.receive_message(QueueUrl=m.queue_url, MaxNumberOfMessages=min(10, m.batch_size - len(received)),
                                           WaitTimeSeconds=0, MessageSystemAttributeNames=["All"],
                                           MessageAttributeNames=["All"]).get("Messages", [])
                if not page:
                    break
                received += page
        if not received:  # what was visible went to the dead-letter queue (redrive policy)
            return False
        batch, rejected = [], []
        for message in received:
            record = lambda_sqs_record(message, m.queue_arn)
            (batch if m.matches(record) else rejected).append(record)
        self._delete_messages(m, rejected)
        if batch:
            self._queue_invoke(m, batch)
        return True

    def _queue_invoke(self, m: QueueMapping, batch: list[dict]) -> bool:
        """Invoke the function with one batch (False: the account's concurrency refused it)."""
        from funnelpilot import clock

        started = clock.now()
        try:
            result = self.invoke(m.function, {"Records": batch})
        except Exception as exc:  # noqa: BLE001 - a function error: the whole batch comes back
            if lambda_.is_throttle(exc):
                m.throttled = (batch, started + m.visibility)
                return False
            failed = batch
        else:
            failed = batch_item_failures(batch, result) if m.report_failures else []
        m.invocations += 1
        m.peak = max(m.peak, len(m.held) + 1)  # the ones still holding a slot and this one
        heapq.heappush(m.held, max(clock.now(), started + lambda_.HOLD))
        failed_ids = {r["messageId"] for r in failed}
        self._delete_messages(m, [r for r in batch if r["messageId"] not in failed_ids])
        return True

    def _delete_messages(self, m: QueueMapping, records: list[dict]) -> None:
        sqs = self.client("sqs")
        with principal.acting_as(self.role_of(m.function)):
            for i in range(0, len(records), 10):
                sqs.delete_message_batch(QueueUrl=m.queue_url, Entries=[
                    {"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(records[i:i + 10])])

    def _queue_due(self) -> float | None:
        """The next simulated time at which an SQS event source mapping will have work: a delayed
        or in-flight message becoming visible, a batching window closing, a slot freeing, the
        retry of a throttled batch (None: none)."""
        from funnelpilot import clock
        from funnelpilot_local import moto_adapter

        now, times = clock.now(), []
        for m in self.queue_mappings:
            if not m.enabled:
                continue
            ready, later = moto_adapter.sqs_queue_state(ACCOUNT, REGION, m.queue_name)
            times.append(later)
            if ready or m.throttled is not None:
                times += [m.held[0] if m.held else None, now + lambda_.HOLD if m.throttled is not None else None,
                          None if m.gathering_since is None else m.gathering_since + m.window]
        return min((t for t in times if t is not None and t > now), default=None)

    def _queues_waiting(self) -> bool:
        """Whether a mapping holds visible messages only for a moment (its slots busy, a throttled batch,
        a batching window open): at speed, settle() waits for them."""
        from funnelpilot import clock
        from funnelpilot_local import moto_adapter

        now = clock.now()
        return any(m.enabled and (m.throttled is not None or m.gathering_since is not None or len(m.held) >= m.cap(now))
                   and moto_adapter.sqs_queue_state(ACCOUNT, REGION, m.queue_name, enough=1)[0]
                   for m in self.queue_mappings)

    def queue_messages(self, queue: str) -> list[dict]:
        """What a queue (a template logical id, or a queue name) holds now, in flight and delayed messages
        too: [{"id", "body", "attributes", "receive_count", "sent"}] (a dead-letter queue's, for instance)."""
        from funnelpilot_local import moto_adapter

        return moto_adapter.sqs_messages(ACCOUNT, REGION, self.template.attributes.get((queue, "QueueName"), queue))

    def running_executions(self) -> list[dict]:
        sfn = self.client("stepfunctions")
        return [ex for arn in self.state_machine_arns()
                for ex in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]]

    def state_machine_arns(self) -> list[str]:
        t = self.template
        return [t.physical[lid] for lid in t.of_type("AWS::Serverless::StateMachine") if lid in t.physical]

    def settle(self, timeout: float = 30.0, poll: float = 0.02) -> bool:
        """Pump events until no delivery is queued and no execution is running (or timeout).
        Stepped mode: until nothing can run before the clock moves (one delivery at a time)."""
        if self.stepped:
            return self._settle_stepped(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            self.flush_outbox()
            if self._in_flight == 0 and not self.running_executions():
                if self.pump() == 0 and self._in_flight == 0 and not self._queues_waiting():
                    self.flush_outbox()
                    return True
            time.sleep(poll)
        return False

    def _settle_stepped(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self.scheduler.wait_idle(max(0.0, deadline - time.monotonic())):
                return False
            if not (self._deliver_one() or self._poll_streams() or self._poll_queues()):
                self.flush_outbox()
                return True

    def advance(self, seconds: float, timeout: float = 120.0) -> bool:
        """Stepped mode: let ``seconds`` of simulated time pass, waking each due wait in
        (deadline, order) order and settling after each, so the outcome does not depend on
        thread timing; schedules fire on the hour grid. False if something did not settle
        within ``timeout`` real seconds."""
        from funnelpilot import clock

        target = clock.now() + seconds
        while True:
            if not self.settle(timeout):
                return False
            hour = min(target, (clock.now() // 3600 + 1) * 3600)
            due = self.scheduler.next_due(hour)
            # a throttled delivery's retry, an SQS event source mapping's next message
            queued = min((q for q in (self._delayed[0][0] if self._delayed else None, self._queue_due())
                          if q is not None), default=None)
            if queued is not None and queued <= hour and (due is None or queued < due.deadline):
                clock.advance_to(queued)
                continue
            if due is not None:
                clock.advance_to(due.deadline)
                self.scheduler.wake(due)
                continue
            clock.advance_to(hour)
            self.fire_schedules()
            if hour >= target:
                return self.settle(timeout)

    # ------------------------------------------------------------------ HTTP
    def http(self, method: str, path: str, *, json_body=None, form=None, body: str | bytes | None = None,
             headers: dict | None = None, source_ip: str = "127.0.0.1") -> "HttpResponse":
        """Call a route exactly as API Gateway (HTTP API, payload v2) would."""
        path, _, query = path.partition("?")
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if json_body is not None:
            body = json.dumps(json_body)
            headers.setdefault("content-type", "application/json")
        elif form is not None:
            body = urlencode(form)
            headers.setdefault("content-type", "application/x-www-form-urlencoded")
        for route in self.routes:
            params = route.match(method.upper(), path)
            if params is not None:
                break
        else:
            return HttpResponse(404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
        if not self.route_throttle.allow(f"{route.method} {route.path}"):
            return HttpResponse(429, {"content-type": "application/json"}, b'{"message":"Too Many Requests"}')
        event = http_api_event(method.upper(), path, query, headers, body, params, route, source_ip)
        if route.auth == "AWS_IAM":  # API Gateway checks the SigV4 signature before the function runs
            if headers.get("x-api-key") != self.admin_key:
                return HttpResponse(403, {"content-type": "application/json"}, b'{"message":"Forbidden"}')
            event["requestContext"]["authorizer"] = {"iam": {
                "accessKey": "LOCAL", "accountId": ACCOUNT, "callerId": "local-admin", "principalOrgId": None,
                "userArn": f"arn:aws:iam::{ACCOUNT}:user/local-admin", "userId": "local-admin"}}
        try:
            result = self.invoke(route.function, event)
        except Exception as exc:
            if not lambda_.is_throttle(exc):
                raise
            # API Gateway cannot invoke a throttled function: its integration fails with a 500
            return HttpResponse(500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')
        return HttpResponse.from_lambda(result)

    # ------------------------------------------------------------------ outbox
    def flush_outbox(self) -> list[Path]:
        """Write every email SES accepted since the last call to .local/outbox/<message_id>.eml."""
        from funnelpilot_local.moto_adapter import sent_emails_since

        written = []
        sent, self._outbox_seen = sent_emails_since(ACCOUNT, REGION, self._outbox_seen)
        for ses_id, raw in sent:
            data = raw.encode() if isinstance(raw, str) else raw
            name = _HEADERS.parsebytes(data).get("X-Funnelpilot-Message-Id") or ses_id
            path = self.outbox / f"{name}.eml"
            path.write_bytes(data)
            written.append(path)
        return written


@dataclass
class HttpResponse:
    status: int
    headers: dict
    body: bytes

    @classmethod
    def from_lambda(cls, result) -> "HttpResponse":
        if not isinstance(result, dict) or "statusCode" not in result:
            return cls(200, {"content-type": "application/json"}, json.dumps(result).encode())
        raw = result.get("body") or ""
        body = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        for key, values in (result.get("multiValueHeaders") or {}).items():
            headers[key.lower()] = ", ".join(values)
        if result.get("cookies"):
            headers["set-cookie"] = "; ".join(result["cookies"])
        return cls(int(result["statusCode"]), headers, body)

    def json(self):
        return json.loads(self.body)


def http_api_event(method, path, query, headers, body, params, route, source_ip) -> dict:
    """An API Gateway HTTP API payload format 2.0 event."""
    binary = isinstance(body, bytes)
    content_type = headers.get("content-type", "")
    textual = content_type.startswith(("application/json", "text/")) or not content_type
    encode = body is not None and (binary or not textual)
    if encode:
        data = body if binary else body.encode()
        body = base64.b64encode(data).decode()
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": f"{route.method} {route.path}",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": [c.strip() for c in headers.get("cookie", "").split(";") if c.strip()] or None,
        "headers": headers,
        "queryStringParameters": dict(parse_qsl(query, keep_blank_values=True)) or None,
        "pathParameters": params or None,
        "requestContext": {
            "accountId": ACCOUNT, "apiId": "local", "domainName": "127.0.0.1", "domainPrefix": "127",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": headers.get("user-agent", "")},
            "requestId": uuid.uuid4().hex, "routeKey": f"{route.method} {route.path}", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "body": body,
        "isBase64Encoded": encode,
        "stageVariables": None,
    }


QUEUE_ATTRIBUTES = ("ContentBasedDeduplication", "DeduplicationScope", "DelaySeconds", "FifoQueue", "FifoThroughputLimit",
                    "MaximumMessageSize", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds", "SqsManagedSseEnabled",
                    "VisibilityTimeout")  # AWS::SQS::Queue properties that are queue attributes of the same name
SQS_RECORD_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
                         "SequenceNumber", "MessageGroupId", "MessageDeduplicationId", "AWSTraceHeader")


def lambda_sqs_record(message: dict, queue_arn: str) -> dict:
    """A received SQS message (ReceiveMessage's shape) as Lambda hands it to a function."""
    def attribute(value: dict) -> dict:
        shaped = {"stringValue": value["StringValue"]} if "StringValue" in value else {
            "binaryValue": base64.b64encode(value["BinaryValue"]).decode()}
        return {**shaped, "stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}

    record = {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
              "attributes": {k: v for k, v in message.get("Attributes", {}).items() if k in SQS_RECORD_ATTRIBUTES},
              "messageAttributes": {k: attribute(v) for k, v in message.get("MessageAttributes", {}).items()}}
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return {**record, "md5OfBody": message["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
            "awsRegion": REGION}


def batch_item_failures(batch: list[dict], response) -> list[dict]:
    """The records of ``batch`` a ReportBatchItemFailures response fails: none for a null or empty
    response or list, those it names, or the whole batch when it is not one Lambda can read (not
    JSON, not an object, an item without a non-empty ``itemIdentifier`` of this batch)."""
    try:
        json.dumps(response)
    except (TypeError, ValueError):
        return batch
    if response is None:
        return []
    if not isinstance(response, dict):
        return batch
    items = response.get("batchItemFailures")
    if not items:
        return []
    by_id = {r["messageId"]: r for r in batch}
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("itemIdentifier") in by_id for i in items):
        return batch
    return [by_id[i["itemIdentifier"]] for i in items]


def lambda_stream_record(record: dict, stream_arn: str) -> dict:
    """A DynamoDB Streams record (moto_adapter.stream_records) in the shape Lambda hands it to a
    function, a copy: JSON only (binary values base64, ApproximateCreationDateTime in epoch
    seconds) plus ``eventSourceARN``."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, datetime):  # naive: UTC
            return int(value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp())
        return value

    return {**plain(record), "eventSourceARN": stream_arn}


def unbatch_items(definition: dict) -> dict:
    """moto's interpreter does not parse a Map's ``ItemBatcher`` (moto 5.2.5; ItemReader it runs):
    each Map with one gets instead an ``ItemSelector`` that gives every child workflow the input a
    batch has on AWS, ``{"Items": [item], "BatchInput": ...}``: locally, batches of one item."""
    def unbatch(state: dict) -> None:
        batcher = state.pop("ItemBatcher", None)
        if batcher is not None:
            state["ItemSelector"] = {"Items.$": "States.Array($$.Map.Item.Value)",
                                     "BatchInput": batcher.get("BatchInput", {})}

    return _with_each_state(definition, unbatch)


def _with_each_state(definition: dict, change) -> dict:
    """A copy of an ASL definition with ``change(state)`` applied to every state, nested ones
    (Parallel branches, Map iterators) included."""
    def walk(states: dict) -> None:
        for state in states.values():
            change(state)
            for branch in state.get("Branches", []):
                walk(branch["States"])
            for key in ("Iterator", "ItemProcessor"):
                if key in state:
                    walk(state[key]["States"])

    definition = json.loads(json.dumps(definition))
    walk(definition["States"])
    return definition


def compress_waits(definition: dict, speed: float) -> dict:
    """Shorten every duration in an ASL definition by the clock speed (whole seconds)."""
    def scaled(seconds: float) -> int:
        return max(1, round(seconds / speed)) if seconds > 0 else 0

    def compress(state: dict) -> None:
        if state.get("Type") == "Wait" and "Seconds" in state:
            state["Seconds"] = scaled(state["Seconds"])
        for key in ("TimeoutSeconds", "HeartbeatSeconds"):
            if key in state:
                state[key] = max(1, scaled(state[key]))
        for retry in state.get("Retry", []):
            if "IntervalSeconds" in retry:
                retry["IntervalSeconds"] = max(1, scaled(retry["IntervalSeconds"]))
            if "MaxDelaySeconds" in retry:
                retry["MaxDelaySeconds"] = max(1, scaled(retry["MaxDelaySeconds"]))

    return _with_each_state(definition, compress)

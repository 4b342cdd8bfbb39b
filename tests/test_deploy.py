"""What a real deploy of template.yaml needs and the local runtime checks as it builds the stack:
alarms that can notify, a signing key that survives a re-create, stack-scoped names, SES
identities that may already exist (aws_rules.cloudformation)."""
import copy
import re
import os
from email import message_from_bytes
from pathlib import Path

import pytest

from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.aws_rules.cloudformation import StackError, check_alarm_actions
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT, LOCAL_VALUES, REGION, Template, load_yaml

START = 1_772_445_600.0  # Monday 10:00 UTC, as in conftest
TEMPLATE_TEXT = (ROOT / "template.yaml").read_text()


def runtime(tmp_path: Path, **kwargs) -> Runtime:
    return Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", **kwargs)


def modified_template(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of template.yaml with one text replaced (the runtime loads it from tmp_path)."""
    assert TEMPLATE_TEXT.count(old) == 1, old
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE_TEXT.replace(old, new))
    return path


def welcome_email(rt: Runtime, email: str = "ann@example.com"):
    resp = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "list": "test-single", "first_name": "Ann"})
    assert resp.status == 202, resp.body
    assert rt.settle()
    [path] = rt.flush_outbox() or sorted(rt.outbox.glob("*.eml"))
    return message_from_bytes(path.read_bytes())


# ---------------------------------------------------------------- alarms that notify
ALARM_TOPIC = "  AlarmTopic:\n    Type: AWS::SNS::Topic\n"
KEY = """
  AlarmKey:
    Type: AWS::KMS::Key
    Properties:
      KeyPolicy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Principal: { AWS: !Sub "arn:${AWS::Partition}:iam::${AWS::AccountId}:root" }
            Action: kms:*
            Resource: "*"
%s
"""
CLOUDWATCH_STATEMENT = """          - Effect: Allow
            Principal: { Service: cloudwatch.amazonaws.com }
            Action: [kms:Decrypt, kms:GenerateDataKey*]
            Resource: "*"
"""


def test_shipped_alarm_topic_is_deliverable(tmp_path):
    check_alarm_actions(Template.load(ROOT))
    assert "KmsMasterKeyId" not in load_yaml(ROOT / "template.yaml")["Resources"]["AlarmTopic"].get("Properties", {})


def test_runtime_refuses_alarms_on_a_topic_with_the_aws_managed_key(tmp_path):
    path = modified_template(tmp_path, ALARM_TOPIC, ALARM_TOPIC + "    Properties:\n      KmsMasterKeyId: alias/aws/sns\n")
    rt = runtime(tmp_path, template=path)
    with pytest.raises(StackError) as info:
        rt.start()
    message = str(info.value)
    assert "alarm DeadLetterAlarm cannot notify SNS topic AlarmTopic" in message
    assert "alias/aws/sns" in message
    assert rt._mock is None  # nothing left running: the next runtime starts clean


@pytest.mark.parametrize("statement, ok", [(CLOUDWATCH_STATEMENT, True), ("", False)])
def test_customer_managed_key_must_let_cloudwatch_use_it(tmp_path, statement, ok):
    path = modified_template(tmp_path, ALARM_TOPIC, KEY % statement + ALARM_TOPIC
                             + "    Properties:\n      KmsMasterKeyId: !Ref AlarmKey\n")
    t = Template.load(ROOT, path=path)
    if ok:
        check_alarm_actions(t)
    else:
        with pytest.raises(StackError, match="KeyPolicy does not allow cloudwatch.amazonaws.com"):
            check_alarm_actions(t)


# ---------------------------------------------------------------- signing key
def test_signing_key_is_an_ssm_securestring_the_stack_only_names():
    """CloudFormation cannot create a SecureString (AWS::SSM::Parameter: String, StringList): the
    stack takes its name, validated at deploy (AWS::SSM::Parameter::Name), and outlives the stack."""
    doc = load_yaml(ROOT / "template.yaml")
    assert doc["Parameters"]["SigningKeyParameter"]["Type"] == "AWS::SSM::Parameter::Name"
    assert not [lid for lid, r in doc["Resources"].items() if r["Type"] == "AWS::SecretsManager::Secret"]


KEPT = "/shop-old/signing-key"


def test_recreated_stack_reads_the_kept_signing_key(tmp_path):
    with runtime(tmp_path, parameters={"SigningKeyParameter": KEPT}, rules=Rules(existing_parameters=(KEPT,))) as rt:
        assert {f.env["SIGNING_KEY_PARAMETER"] for f in rt.functions.values()} == {KEPT}
        kept = rt.client("ssm").get_parameter(Name=KEPT)["Parameter"]
        assert kept["Type"] == "SecureString"
        mail = welcome_email(rt)
        unsubscribe = mail["List-Unsubscribe"].strip("<>").split("http://127.0.0.1:3000", 1)[1]
        assert rt.http("GET", unsubscribe).status == 200  # the link's token checks out against that key
        assert rt.http("GET", unsubscribe[:-2] + "xx").status == 404
        assert rt.denied == []  # ssm:GetParameter on that parameter only; aws/ssm decrypts for the account


def test_a_signing_key_the_account_does_not_have_fails_the_deploy(tmp_path):
    with pytest.raises(StackError, match="parameter value /funnelpilot/signing-key .* does not exist"):
        runtime(tmp_path, rules=Rules(existing_parameters=(KEPT,))).start()


def test_each_function_may_read_only_the_signing_key(tmp_path):
    with runtime(tmp_path, rules=Rules(existing_parameters=("/funnelpilot/signing-key", KEPT))) as rt:
        from botocore.exceptions import ClientError

        from funnelpilot_local.aws_rules import principal

        with principal.acting_as(rt.role_of("TrackClickFunction")):
            assert rt.client("ssm").get_parameter(Name="/funnelpilot/signing-key", WithDecryption=True)
            with pytest.raises(ClientError, match="AccessDenied"):
                rt.client("ssm").get_parameter(Name=KEPT, WithDecryption=True)
        rt.denied.clear()


# ---------------------------------------------------------------- SES identity
def identities(rt: Runtime) -> set[str]:
    return set(rt.client("ses").list_identities()["Identities"])


def test_email_identity_default_and_already_existing(tmp_path):
    with runtime(tmp_path) as rt:
        assert identities(rt) == {"hello@example.com"}
    with pytest.raises(StackError, match=r"SenderEmailIdentity .*hello@example.com already exists.*AlreadyExists"):
        runtime(tmp_path, rules=Rules(ses_existing_identities=("Hello@Example.com",))).start()


def test_domain_identity_and_already_existing(tmp_path):
    with runtime(tmp_path, parameters={"SenderIdentity": "domain"}) as rt:
        assert identities(rt) == {"example.com"}
        assert welcome_email(rt)["From"] == "Ada at Example <hello@example.com>"  # sent through the domain identity
    with pytest.raises(StackError, match=r"SenderDomainIdentity .*example.com already exists"):
        runtime(tmp_path, parameters={"SenderIdentity": "domain"},
                rules=Rules(ses_existing_identities=("example.com",))).start()


def test_existing_identity_creates_none_and_sends(tmp_path):
    with runtime(tmp_path, parameters={"SenderIdentity": "existing"},
                 rules=Rules(ses_existing_identities=("example.com",))) as rt:
        assert identities(rt) == {"example.com"}  # only what the account had
        assert welcome_email(rt)["To"] == "ann@example.com"
    with runtime(tmp_path / "unverified", parameters={"SenderIdentity": "existing"}) as rt:  # SES refuses to send
        rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single"})
        assert rt.settle()
        assert not list(rt.outbox.glob("*.eml"))


SENDERS = ("SequenceStepFunction", "ConfirmMailerFunction", "NotifyFunction", "BroadcastSendFunction", "BroadcastsAdminFunction")


@pytest.mark.parametrize("sender", ["hello@example.com", "news@mail.shop.example"])
def test_every_sending_function_may_send_as_the_address_and_its_domain(sender):
    t = Template.load(ROOT, {"SenderEmail": sender})
    t.physical.update(EmailConfigurationSet="EmailConfigurationSet")
    identity = f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/"
    for lid, res in t.resources.items():
        statements = [st for p in res.get("Properties", {}).get("Policies", []) if isinstance(p, dict)
                      for st in p.get("Statement", [])]
        sends = [st for st in statements if "ses:SendRawEmail" in st["Action"]]
        assert bool(sends) == (lid in SENDERS), lid
        resources = {r for st in sends for r in t.resolve(st["Resource"])}
        if sends:
            assert {identity + sender, identity + sender.split("@")[1]} <= resources, lid


# ---------------------------------------------------------------- stack-scoped names
# The property holding each resource type's physical name (absent: CloudFormation generates a
# unique one from the stack name), and the scope that name must be unique in.
NAME_PROPERTIES = {
    "AWS::Events::EventBus": "Name", "AWS::Events::Rule": "Name", "AWS::Events::Connection": "Name",
    "AWS::Events::ApiDestination": "Name", "AWS::Scheduler::Schedule": "Name", "AWS::Scheduler::ScheduleGroup": "Name",
    "AWS::SSM::Parameter": "Name", "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::CloudWatch::Dashboard": "DashboardName", "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::SES::EmailIdentity": "EmailIdentity", "AWS::SES::ConfigurationSet": "Name",
    "AWS::Lambda::LayerVersion": "LayerName", "AWS::Lambda::Function": "FunctionName", "AWS::IAM::Role": "RoleName",
    "AWS::DynamoDB::Table": "TableName", "AWS::SQS::Queue": "QueueName", "AWS::SNS::Topic": "TopicName",
    "AWS::SecretsManager::Secret": "Name", "AWS::KMS::Alias": "AliasName", "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::S3::Bucket": "BucketName",  # global: leave it unnamed (CloudFormation generates one)
    "AWS::SMSVOICE::ConfigurationSet": "ConfigurationSetName",
}
# Named inside another resource of the stack, or not unique by name at all.
NOT_ACCOUNT_SCOPED = {"AWS::ApiGatewayV2::Api", "AWS::ApiGatewayV2::Stage", "AWS::Lambda::Permission",
                      "AWS::Lambda::EventInvokeConfig", "AWS::SES::ConfigurationSetEventDestination",
                      "AWS::SNS::Subscription", "AWS::SQS::QueuePolicy", "AWS::Lambda::EventSourceMapping",
                      "AWS::SNS::TopicPolicy"}


@pytest.fixture(scope="module")
def translated() -> dict:
    """template.yaml as CloudFormation will see it: after the SAM transform."""
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    doc = copy.deepcopy(load_yaml(ROOT / "template.yaml"))
    for res in doc["Resources"].values():
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if key in res.get("Properties", {}):
                res["Properties"][key] = f"s3://local/{res['Properties'][key]}"

    class NoManagedPolicies:
        def load(self):
            return {}

    return transform(doc, {}, NoManagedPolicies())


def physical_names(translated: dict, stack: str, **parameters) -> set[tuple[str, str]]:
    """(scope, name) of every account-scoped physical name the stack would create."""
    t = Template(ROOT, translated, Template.load(ROOT).parameters | parameters, stack_name=stack)
    names = set()
    for lid, res in t.resources.items():
        kind = res["Type"]
        assert kind in NAME_PROPERTIES or kind in NOT_ACCOUNT_SCOPED, f"{lid}: decide how {kind} is named"
        if kind in NOT_ACCOUNT_SCOPED or NAME_PROPERTIES[kind] not in res.get("Properties", {}):
            continue
        if "Condition" in res and not t.condition(res["Condition"]):
            continue
        props = res["Properties"]
        scope = {"AWS::Scheduler::Schedule": f"group {props.get('GroupName', 'default')}",
                 "AWS::Events::Rule": f"bus {t.resolve(props.get('EventBusName', 'default'))}"}.get(kind, kind)
        names.add((scope, t.resolve(props[NAME_PROPERTIES[kind]])))
    return names


def test_two_stacks_in_one_account_name_nothing_alike(translated):
    sms = "arn:aws:sms-voice:us-east-1:123456789012:phone-number/phone-0123456789abcdef0123456789abcdef"
    a = physical_names(translated, "shop-a", CreateDashboard="true", SmsOriginationIdentity=sms)
    b = physical_names(translated, "shop-b", SenderIdentity="existing", CreateDashboard="true",  # reuses the sender
                       SmsOriginationIdentity=sms)  # and the SMS number: its configuration set and topic are the stack's
    assert {scope for scope, _ in a} >= {"AWS::Events::EventBus", "group default", "AWS::Scheduler::ScheduleGroup",
                                         "AWS::SSM::Parameter", "AWS::StepFunctions::StateMachine",
                                         "AWS::CloudWatch::Dashboard", "AWS::SES::EmailIdentity",
                                         "AWS::Lambda::LayerVersion"}
    assert a & b == set()
    assert {(s, n) for s, n in a if "shop-a" not in n} == {("AWS::SES::EmailIdentity", "hello@example.com")}
    both_create = physical_names(translated, "shop-b", CreateDashboard="true")
    assert a & both_create == {("AWS::SES::EmailIdentity", "hello@example.com")}  # why SenderIdentity=existing


def test_bus_is_named_after_the_stack_unless_named(translated):
    assert ("AWS::Events::EventBus", "shop-a") in physical_names(translated, "shop-a")
    assert ("AWS::Events::EventBus", "events") in physical_names(translated, "shop-a", BusName="events")


def test_runtime_builds_the_stack_under_its_name(tmp_path):
    with runtime(tmp_path, stack_name="shop-b") as rt:
        assert "shop-b" in [b["Name"] for b in rt.client("events").list_event_buses()["EventBuses"]]
        assert all(arn.split(":")[-1].startswith("shop-b-") for arn in rt.state_machine_arns())
        assert rt.client("ssm").get_parameter(Name="/shop-b/events-api-key")["Parameter"]["Value"]
        assert [s["name"] for s in rt.schedules] == ["shop-b-reengage-daily"]
        assert {f.env["POWERTOOLS_SERVICE_NAME"] for f in rt.functions.values()} == {"shop-b"}
        assert welcome_email(rt)["To"] == "ann@example.com"  # events flow over the stack's bus


@pytest.mark.parametrize("name, value", [("SenderIdentity", "both"), ("SenderEmail", "hello"),
                                         ("Tracing", "PassThrough"), ("CustomMetrics", "yes")])
def test_a_parameter_cloudformation_would_refuse_is_refused(name, value):
    with pytest.raises(ValueError, match=f"parameter {name}="):
        Template.load(ROOT, {name: value})


# ---------------------------------------------------------------- parameters a deploy must be given
PARAMETERS = load_yaml(ROOT / "template.yaml")["Parameters"]
REQUIRED = {name for name, spec in PARAMETERS.items() if "Default" not in spec}  # a deploy must pass them


def test_no_demo_defaults_a_deploy_would_silently_keep():
    """sam deploy --guided shows a Default as the answer: none may be a placeholder address,
    site or origin; the sender, sales address, site and origins have none (a deploy must be given
    them), and the local runtime has a stand-in for every parameter without one."""
    assert {"SenderEmail", "SalesEmail", "SiteUrl", "CorsOrigins"} <= REQUIRED
    for name, spec in PARAMETERS.items():
        assert not any(p in str(spec.get("Default", "")) for p in ("example.", "localhost", "127.0.0.1")), name
    assert {name for name in REQUIRED if not PARAMETERS[name].get("NoEcho")} <= set(LOCAL_VALUES) <= set(PARAMETERS)


def test_a_parameter_without_default_or_local_value_is_refused_clearly(tmp_path):
    path = modified_template(tmp_path, "  BusName:\n", "  ShopName:\n    Type: String\n  BusName:\n")
    with pytest.raises(ValueError, match=r"parameter ShopName has no Default.*'Parameters: \[ShopName\] must have "
                                         r"values'.*LOCAL_VALUES"):
        Template.load(ROOT, path=path)
    assert Template.load(ROOT, {"ShopName": "Ann's"}, path=path).parameters["ShopName"] == "Ann's"  # as a deploy passes it


@pytest.mark.parametrize("name, value", [("SiteUrl", "example.com"), ("CorsOrigins", "https://a.example, https://b.example"),
                                         ("SalesEmail", "sales"), ("MailFromSubdomain", "mail.example.com")])
def test_a_malformed_deploy_value_is_refused(name, value):
    with pytest.raises(ValueError, match=f"parameter {name}="):
        Template.load(ROOT, {name: value})


# ---------------------------------------------------------------- domain identity, MAIL FROM, DNS records
def deployed(**parameters) -> Template:
    """template.yaml with every resource created, the identity's DKIM tokens as SES returns them."""
    t = Template.load(ROOT, parameters)
    t.physical.update({lid: lid for lid in t.resources})
    for i in (1, 2, 3):
        t.attributes[("SenderDomainIdentity", f"DkimDNSTokenName{i}")] = f"tok{i}._domainkey.shop.example"
        t.attributes[("SenderDomainIdentity", f"DkimDNSTokenValue{i}")] = f"tok{i}.dkim.amazonses.com"
    return t


def outputs(t: Template) -> dict[str, str]:
    """The stack outputs CloudFormation would show."""
    return {k: t.resolve(v["Value"]) for k, v in t.doc["Outputs"].items()
            if "Condition" not in v or t.condition(v["Condition"])}


def test_domain_identity_prints_every_dns_record_to_publish():
    t = deployed(SenderIdentity="domain", SenderEmail="news@shop.example")
    identity = t.resolve(t.properties("SenderDomainIdentity"))
    assert identity["DkimSigningAttributes"] == {"NextSigningKeyLength": "RSA_2048_BIT"}
    assert identity["MailFromAttributes"] == {"MailFromDomain": "mail.shop.example", "BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}
    out = outputs(t)
    assert [out[f"DkimRecord{i}"] for i in (1, 2, 3)] == [
        f"tok{i}._domainkey.shop.example CNAME tok{i}.dkim.amazonses.com" for i in (1, 2, 3)]
    assert out["MailFromMxRecord"] == f"mail.shop.example MX 10 feedback-smtp.{REGION}.amazonses.com"
    assert out["MailFromSpfRecord"] == 'mail.shop.example TXT "v=spf1 include:amazonses.com ~all"'
    assert out["DmarcRecord"] == '_dmarc.shop.example TXT "v=DMARC1; p=none; rua=mailto:news@shop.example"'


def test_no_custom_mail_from_when_empty_and_no_dns_outputs_for_an_address():
    t = deployed(SenderIdentity="domain", MailFromSubdomain="")
    assert "MailFromAttributes" not in t.resolve(t.properties("SenderDomainIdentity"))
    assert {"DkimRecord1", "DmarcRecord"} <= set(outputs(t)) and "MailFromMxRecord" not in outputs(t)
    assert not {k for k in outputs(deployed()) if "Record" in k}  # SenderIdentity=email: nothing to publish


def test_runtime_sets_the_mail_from_domain_and_still_sends(tmp_path):
    with runtime(tmp_path, parameters={"SenderIdentity": "domain"}) as rt:
        attrs = rt.client("ses").get_identity_mail_from_domain_attributes(Identities=["example.com"])
        assert attrs["MailFromDomainAttributes"]["example.com"]["MailFromDomain"] == "mail.example.com"
        assert attrs["MailFromDomainAttributes"]["example.com"]["BehaviorOnMXFailure"] == "UseDefaultValue"
        assert welcome_email(rt)["From"] == "Ada at Example <hello@example.com>"


# ---------------------------------------------------------------- the README's parameter table
def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_parameter_table_lists_every_template_parameter():
    """The deploy guide's table is the one place a deployer reads what --guided asks: one row per
    parameter of template.yaml, no row for a parameter that is gone, each with its meaning."""
    table = readme_section("Deploy to AWS").split("\n| parameter | meaning |\n", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `([\w<>]+)` \| (.+) \|$", table, re.MULTILINE))
    params = PARAMETERS
    generated = {name for name in rows if "<Name>" in name}  # one per entry of a file (webhooks.yaml)
    patterns = [re.compile(name.replace("<Name>", r"\w+") + "$") for name in generated]
    assert sorted(set(rows) - generated) == sorted(p for p in params if not any(r.match(p) for r in patterns))
    for name in REQUIRED - {p for p in params if any(r.match(p) for r in patterns)}:
        assert "**required**" in rows[name], name  # the table says which ones --guided cannot skip

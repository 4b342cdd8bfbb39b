"""``funnelpilot doctor``: every verdict, from the answers AWS gives.

SSM and SNS are moto's. moto has no SES v2 ``GetAccount``, reports no identity as verified nor
any MAIL FROM status, never leaves an email subscription pending, and its CloudFormation needs
extras this project does not install: those answers come from botocore's Stubber, which checks
each request and response against the service's own model (so a misspelt field fails here)."""
import datetime as dt

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from funnelpilot_local import cli, doctor
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import LOCAL_VALUES

REGION = "eu-west-1"
STACK = "shop"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
GOOD = {"SenderEmail": "news@shop.test", "SenderIdentity": "domain", "SalesEmail": "sales@shop.test",
        "SiteUrl": "https://www.shop.test", "CorsOrigins": "https://www.shop.test", "AllowedRedirectHosts": "",
        "AlarmEmail": "ops@shop.test", "SigningKeyParameter": "/funnelpilot/signing-key", "MailFromSubdomain": "mail"}
PRODUCTION = {"ProductionAccessEnabled": True, "SendingEnabled": True, "EnforcementStatus": "HEALTHY",
              "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 1200.0}}
SANDBOX = {"ProductionAccessEnabled": False, "SendingEnabled": True, "EnforcementStatus": "HEALTHY",
           "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0}}
VERIFIED_DOMAIN = {"IdentityType": "DOMAIN", "VerifiedForSendingStatus": True,
                   "DkimAttributes": {"SigningEnabled": True, "Status": "SUCCESS", "Tokens": ["t1", "t2", "t3"]},
                   "MailFromAttributes": {"MailFromDomain": "mail.shop.test", "MailFromDomainStatus": "SUCCESS",
                                          "BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}}


class Account:
    """The AWS account doctor reads: moto (SSM, SNS) and stubbed answers (CloudFormation, SES v2)."""

    def __init__(self):
        self.clients = {s: boto3.client(s, region_name=REGION) for s in ("cloudformation", "sesv2", "sns", "ssm")}
        self.stubs = {s: Stubber(self.clients[s]) for s in ("cloudformation", "sesv2")}
        self.topic = self.clients["sns"].create_topic(Name=f"{STACK}-AlarmTopic-X1")["TopicArn"]

    def client(self, service: str):
        return self.clients[service]

    def stack(self, params: dict, status: str = "UPDATE_COMPLETE") -> None:
        self.stubs["cloudformation"].add_response("describe_stacks", {"Stacks": [{
            "StackName": STACK, "CreationTime": NOW, "StackStatus": status,
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]}]}, {"StackName": STACK})

    def alarm_topic(self) -> None:
        self.stubs["cloudformation"].add_response("describe_stack_resource", {"StackResourceDetail": {
            "LogicalResourceId": "AlarmTopic", "PhysicalResourceId": self.topic, "ResourceType": "AWS::SNS::Topic",
            "LastUpdatedTimestamp": NOW, "ResourceStatus": "CREATE_COMPLETE"}},
            {"StackName": STACK, "LogicalResourceId": "AlarmTopic"})

    def ses(self, account: dict, *identities: tuple[str, dict | None]) -> None:
        self.stubs["sesv2"].add_response("get_account", account, {})
        for name, found in identities:
            if found is None:
                self.stubs["sesv2"].add_client_error("get_email_identity", "NotFoundException", f"{name} not found", 404,
                                                     expected_params={"EmailIdentity": name})
            else:
                self.stubs["sesv2"].add_response("get_email_identity", found, {"EmailIdentity": name})

    def run(self) -> list[doctor.Check]:
        for stub in self.stubs.values():
            stub.activate()
        checks = doctor.stack_checks(STACK, self.client)
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()  # every answer prepared was asked for
        return checks


@pytest.fixture
def account(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield Account()


def lines(checks) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.message) for c in checks}


def healthy(account: Account, **params) -> None:
    account.stack(GOOD | params)
    account.ses(PRODUCTION, ("shop.test", VERIFIED_DOMAIN))
    account.alarm_topic()
    account.clients["sns"].subscribe(TopicArn=account.topic, Protocol="email", Endpoint="ops@shop.test")  # moto: confirmed
    account.clients["ssm"].put_parameter(Name="/funnelpilot/signing-key", Type="SecureString", Value="k" * 48)


def test_a_ready_stack_is_all_ok(account):
    healthy(account)
    checks = account.run()
    assert doctor.exit_code(checks) == 0
    assert {c.status for c in checks} == {"ok"}, doctor.report(checks)
    got = lines(checks)
    assert got["ses access"][1] == f"production access in {REGION}"
    assert got["ses quota"][1] == "1,200 of 50,000 sent in the last 24 h, 14 a second"
    assert got["sender identity"][1] == "shop.test verified"
    assert got["mail from"][1] == "mail.shop.test"
    assert got["alarm subscription"][1] == "ops@shop.test confirmed"
    assert got["signing key"][1] == "/funnelpilot/signing-key (SecureString)"
    assert doctor.report(checks).splitlines()[0] == f"ok    stack              {STACK}: UPDATE_COMPLETE"


def test_a_new_account_gets_what_to_do_for_each_gap(account):
    account.stack(GOOD | {"SenderEmail": "hello@example.com", "SiteUrl": "https://example.com",
                          "CorsOrigins": "http://localhost:3000", "SenderIdentity": "domain",
                          "PostalAddress": LOCAL_VALUES["PostalAddress"]})
    pending = {"IdentityType": "DOMAIN", "VerifiedForSendingStatus": False,
               "DkimAttributes": {"SigningEnabled": True, "Status": "PENDING"},
               "MailFromAttributes": {"MailFromDomain": "mail.example.com", "MailFromDomainStatus": "PENDING",
                                      "BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}}
    account.ses(SANDBOX, ("example.com", pending))
    account.alarm_topic()
    sns = Stubber(account.clients["sns"])  # SNS's own answer for an unconfirmed email subscription
    sns.add_response("list_subscriptions_by_topic", {"Subscriptions": [
        {"SubscriptionArn": "PendingConfirmation", "Owner": "123456789012", "Protocol": "email",
         "Endpoint": "ops@shop.test", "TopicArn": account.topic}]}, {"TopicArn": account.topic})
    sns.activate()
    checks = account.run()
    assert doctor.exit_code(checks) == 1
    report = doctor.report(checks)
    assert [c.message.split("=")[0] for c in checks if c.name == "parameter"] == ["SenderEmail", "SiteUrl", "CorsOrigins",
                                                                                  "PostalAddress"]
    assert "FAIL  parameter          SenderEmail=hello@example.com is a placeholder: run `sam deploy --guided`" in report
    got = lines(checks)
    assert got["ses access"][0] == "warn" and "request production access" in got["ses access"][1]
    assert got["ses quota"] == ("ok", "3 of 200 sent in the last 24 h, 1 a second")
    assert got["sender identity"][0] == "FAIL" and "publish the DkimRecord1-3 CNAME outputs" in got["sender identity"][1]
    assert got["dkim"][0] == "warn" and "has not seen the DkimRecord1-3 CNAMEs yet" in got["dkim"][1]
    assert got["mail from"][0] == "warn" and "MailFromMxRecord and MailFromSpfRecord" in got["mail from"][1]
    assert got["alarm subscription"][0] == "warn" and "Confirm subscription" in got["alarm subscription"][1]
    assert got["signing key"][0] == "FAIL" and "aws ssm put-parameter --name /funnelpilot/signing-key" in \
        got["signing key"][1]


def test_no_such_stack(account):
    account.stubs["cloudformation"].add_client_error("describe_stacks", "ValidationError",
                                                     f"Stack with id {STACK} does not exist", 400)
    [check] = account.run()
    assert (check.status, check.name) == ("FAIL", "stack") and f"no stack {STACK} in {REGION}" in check.message


def test_a_failed_stack_and_an_empty_alarm_email(account):
    account.stack(GOOD | {"AlarmEmail": ""}, status="UPDATE_ROLLBACK_COMPLETE")
    account.ses(PRODUCTION, ("shop.test", VERIFIED_DOMAIN))
    account.clients["ssm"].put_parameter(Name="/funnelpilot/signing-key", Type="String", Value="k")
    got = lines(account.run())
    assert got["stack"][0] == "FAIL" and "UPDATE_ROLLBACK_COMPLETE" in got["stack"][1]
    assert got["parameter"][0] == "warn" and got["parameter"][1].startswith("AlarmEmail is empty")
    assert got["alarm subscription"] == ("warn", "none (AlarmEmail is empty)")
    assert got["signing key"][0] == "FAIL" and "is a String, not a SecureString" in got["signing key"][1]


def test_an_existing_identity_is_the_address_or_its_domain(account):
    healthy(account, SenderIdentity="existing")
    account.stubs["sesv2"] = Stubber(account.clients["sesv2"])  # answers again: the address is no identity
    account.ses(PRODUCTION, ("news@shop.test", None), ("shop.test", VERIFIED_DOMAIN))
    assert lines(account.run())["sender identity"] == ("ok", "shop.test verified")


def test_an_address_identity_unverified_and_unsigned(account):
    healthy(account, SenderIdentity="email")
    account.stubs["sesv2"] = Stubber(account.clients["sesv2"])
    account.ses(PRODUCTION, ("news@shop.test", {"IdentityType": "EMAIL_ADDRESS", "VerifiedForSendingStatus": False,
                                                "DkimAttributes": {"SigningEnabled": False, "Status": "NOT_STARTED"}}))
    got = lines(account.run())
    assert got["sender identity"][0] == "FAIL" and "click the link SES emailed to it" in got["sender identity"][1]
    assert got["dkim"][0] == "warn" and "signed for amazonses.com" in got["dkim"][1]
    assert got["mail from"][0] == "warn" and got["mail from"][1].startswith("no custom MAIL FROM")


def test_paused_sending_and_a_quota_nearly_used(account):
    healthy(account)
    account.stubs["sesv2"] = Stubber(account.clients["sesv2"])
    account.ses(PRODUCTION | {"SendingEnabled": False, "EnforcementStatus": "SHUTDOWN",
                              "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 45000.0}},
                ("shop.test", VERIFIED_DOMAIN))
    got = lines(account.run())
    assert got["ses sending"][0] == "FAIL" and got["ses reputation"][0] == "FAIL"
    assert got["ses quota"][0] == "warn" and "near the quota" in got["ses quota"][1]


def test_a_production_request_under_review(account):
    healthy(account)
    account.stubs["sesv2"] = Stubber(account.clients["sesv2"])
    account.ses(SANDBOX | {"Details": {"MailType": "MARKETING", "ReviewDetails": {"Status": "PENDING", "CaseId": "c-42"}}},
                ("shop.test", VERIFIED_DOMAIN))
    assert lines(account.run())["ses access"] == ("warn", f"sandbox in {REGION}; the production-access request "
                                                          "(case c-42) is under review")


def test_local_checks(tmp_path, capsys):
    assert cli.main(["doctor"]) in (0, 1)
    out = capsys.readouterr().out
    assert "ok    funnels" in out and "ok    dependencies" in out and "ok    python" in out
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["pyyaml==0.0.1", "no-such-dist==1.0"]\n')
    pins = doctor._pins(tmp_path)
    assert pins.status == "FAIL" and "pyyaml 6.0.3 (pinned 0.0.1), no-such-dist missing (pinned 1.0)" in pins.message
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        [check] = [c for c in doctor.local_checks(ROOT, port) if c.name == "port"]
        assert check.status == "warn" and f"{port} is in use" in check.message

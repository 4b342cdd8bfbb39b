"""Faults injected mid-funnel: the retries recover, no step is lost, no email goes twice.

Errors are injected where botocore's own retries are already exhausted (raised from the
client call itself), so what is tested is funnelpilot's recovery: the state machine's
Retry for funnel steps, the asynchronous redelivery for EventBridge consumers.
"""
import botocore.client
import pytest
from botocore.exceptions import ClientError
from conftest import executions, history
from reliability import sent_count

from funnelpilot.channels import emails


@pytest.fixture
def inject(monkeypatch):
    """inject(service, operation, code, times=1, when=lambda params: True): the next
    ``times`` matching calls raise ClientError(code) instead of reaching AWS."""
    rules = []
    original = botocore.client.BaseClient._make_api_call

    def faulty(self, operation_name, api_params):
        service = self.meta.service_model.service_name
        for rule in rules:
            if (rule["service"], rule["operation"]) == (service, operation_name) and rule["left"] > 0 \
                    and rule["when"](api_params):
                rule["left"] -= 1
                rule["raised"] += 1
                raise ClientError({"Error": {"Code": rule["code"], "Message": "injected"},
                                   "ResponseMetadata": {"HTTPStatusCode": 400}}, operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", faulty)

    def add(service, operation, code, times=1, when=lambda params: True):
        rule = {"service": service, "operation": operation, "code": code, "left": times, "raised": 0, "when": when}
        rules.append(rule)
        return rule

    return add


def _lambda_errors(rt, execution_arn) -> list[str]:
    return [e["lambdaFunctionFailedEventDetails"]["error"] for e in history(rt, execution_arn)
            if "lambdaFunctionFailedEventDetails" in e]


def test_ses_throttling_mid_funnel_is_retried_and_sends_once(rt, tap):
    ses = emails._ses()
    throttled = []

    def throttle(**_):
        if not throttled:
            throttled.append(1)
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Maximum sending rate exceeded."}},
                              "SendRawEmail")

    ses.meta.events.register("before-call.ses.SendRawEmail", throttle)
    try:
        cid = rt.http("POST", "/signup", json_body={"email": "thr@example.com", "consent": True, "list": "test-single"}).json()["contact_id"]
        assert rt.settle(timeout=60) and rt.advance(60)  # the Retry's backoff runs on the simulated clock
    finally:
        ses.meta.events.unregister("before-call.ses.SendRawEmail", throttle)
    [ex] = executions(rt)
    assert throttled and ex["status"] == "RUNNING"  # on to "Wait 2 days"
    assert _lambda_errors(rt, ex["executionArn"]) == ["SendRateExceeded"]
    assert sent_count() == 1
    [sent] = tap.events("email.sent")
    assert sent["detail"]["contact_id"] == cid


def test_a_permanent_ses_error_is_not_retried_blindly(rt, inject):
    """A permanent SES error (not throttling, not a rejected recipient) fails the step instead of looping."""
    rule = inject("ses", "SendRawEmail", "AccountSendingPausedException", times=10)
    rt.http("POST", "/signup", json_body={"email": "rej@example.com", "consent": True, "list": "test-single"})
    assert rt.settle(timeout=60) and rt.advance(60)
    [ex] = executions(rt)
    assert rule["raised"] == 1 and ex["status"] == "FAILED"
    assert sent_count() == 0


def test_transient_dynamodb_error_in_a_consumer_is_redelivered(rt, inject):
    rule = inject("dynamodb", "UpdateItem", "ProvisionedThroughputExceededException",  # the router's entry claim
                  when=lambda p: p.get("Key", {}).get("sk", {}).get("S", "").startswith("FUNNEL#"))
    rt.http("POST", "/signup", json_body={"email": "ddb1@example.com", "consent": True, "list": "test-single"})
    assert rt.settle(timeout=60) and rt.advance(120)  # Lambda retries the failed event a minute later
    assert rule["raised"] == 1
    [ex] = executions(rt)
    assert ex["status"] == "RUNNING" and sent_count() == 1
    assert rt.errors == [] and rt.dead_letters == []

"""Transient AWS failures injected inside a journey, at every point of a send (claim, SES call,
the "sent" mark, email.sent) and in the Step Functions -> Lambda call: each journey goes on
(the state machine's Retry, with the layer naming the error once), the email goes out once,
its links redirect, and email.sent is published exactly once.

Faults are raised from the botocore client call itself, after botocore's own retries would
have been spent; a fault is scoped to the calls of one function or state machine (its IAM
principal), never to the runtime's or the test's own calls.
"""
import botocore.client
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from conftest import executions, history
from test_funnels import DAY, HOUR, click, journey, message, signup

from funnelpilot.errors import TransientError
from funnelpilot_local.aws_rules import principal
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

STEP_ROLE = f"arn:aws:iam::{ACCOUNT}:role/SequenceStepFunctionRole"


@pytest.fixture
def inject(monkeypatch):
    """inject(service, operation, make_error, times, when, role): the next ``times`` calls that
    match (``when(params)``, made as ``role`` unless it is None) raise ``make_error(operation)``."""
    rules = []
    original = botocore.client.BaseClient._make_api_call

    def faulty(self, operation_name, api_params):
        service = self.meta.service_model.service_name
        for rule in rules:
            if (rule["service"], rule["operation"]) == (service, operation_name) and rule["left"] > 0 \
                    and rule["role"] in (None, principal.current()) and rule["when"](api_params):
                rule["left"] -= 1
                rule["raised"] += 1
                raise rule["error"](operation_name)
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", faulty)

    def add(service, operation, error, times=1, when=lambda params: True, role=STEP_ROLE):
        rule = {"service": service, "operation": operation, "error": error, "left": times, "raised": 0,
                "when": when, "role": role}
        rules.append(rule)
        return rule

    return add


def aws_error(code: str, message: str = "injected", status: int = 400):
    return lambda operation: ClientError({"Error": {"Code": code, "Message": message},
                                          "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def message_item(params: dict) -> bool:
    return params.get("Key", params.get("Item", {})).get("sk", {}).get("S", "").startswith("MSG#")


def marks_sent(params: dict) -> bool:
    return message_item(params) and {"S": "sent"} in params.get("ExpressionAttributeValues", {}).values()


def email_sent(params: dict) -> bool:
    return any(e["DetailType"] == "email.sent" for e in params["Entries"])


def sequence_step(params: dict) -> bool:
    return params["FunctionName"].endswith("SequenceStepFunction")


FAULTS = {
    "ses network error": ("ses", "SendRawEmail",
                          lambda op: EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"),
                          None, "TransientError"),
    "ses throttling": ("ses", "SendRawEmail", aws_error("Throttling", "Maximum sending rate exceeded."), None,
                       "SendRateExceeded"),
    "ses daily quota": ("ses", "SendRawEmail", aws_error("Throttling", "Daily message quota exceeded."), None,
                        "DailyQuotaExceeded"),
    "dynamodb throughput on the claim": ("dynamodb", "PutItem", aws_error("ProvisionedThroughputExceededException"),
                                         message_item, "TransientError"),
    "dynamodb throttling on the contact read": ("dynamodb", "GetItem", aws_error("ThrottlingException"),
                                                lambda p: p["Key"]["sk"]["S"] == "PROFILE", "TransientError"),
    "dynamodb 500 on the sent mark": ("dynamodb", "UpdateItem",
                                                        aws_error("InternalServerError", "Internal error", 500),
                                                        marks_sent, None),
    "eventbridge error on email.sent": ("events", "PutEvents", aws_error("InternalException", "Internal", 500),
                                        email_sent, "TransientError"),
    "lambda service exception": ("lambda", "Invoke", aws_error("ServiceException", "Lambda is unavailable", 500),
                                 sequence_step, "Lambda.ServiceException"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_transient_fault_inside_a_journey_is_ridden_out_without_loss_or_duplicate(rt, tap, inject, fault):
    service, operation, error, when, retried = FAULTS[fault]
    role = None if service == "lambda" else STEP_ROLE  # Step Functions calls Lambda: the function filter suffices
    rule = inject(service, operation, error, when=when or (lambda params: True), role=role)
    cid = signup(rt, "fay@example.com")
    assert rt.advance(2 * HOUR)  # the Retry's waits run on the simulated clock (a quota retry waits minutes)
    assert rule["raised"] == 1
    [ex] = executions(rt)
    errors = [e["lambdaFunctionFailedEventDetails"]["error"] for e in history(rt, ex["executionArn"])
              if "lambdaFunctionFailedEventDetails" in e]
    assert errors == ([retried] if retried else [])  # None: absorbed by the send's own retry of that write
    status, states = journey(rt, "welcome", cid)
    assert status == "RUNNING" and states[-1] == "Wait 2 days" and "Record failure" not in states
    m = message(rt, cid, "welcome-1")
    assert m["status"] == "sent" and "lease_until" not in m
    assert len(sent_emails(ACCOUNT, REGION)) == 1
    assert click(rt, cid, "welcome-1", "http") == 302
    sent = [e for e in tap.events("email.sent") if e["detail"]["message_id"] == m["message_id"]]
    assert len(sent) == 1
    assert rt.errors == [] and rt.dead_letters == []
    assert rt.advance(2 * DAY)  # and the journey goes on
    assert journey(rt, "welcome", cid)[1][-1] == "Wait 3 days"


def test_a_sent_email_whose_event_failed_is_announced_by_the_retry_with_the_same_event_id(rt, tap, inject):
    rule = inject("events", "PutEvents", aws_error("ThrottlingException", "Rate exceeded"), times=2, when=email_sent)
    cid = signup(rt, "gus@example.com")
    assert rt.advance(HOUR)
    assert rule["raised"] == 2
    m = message(rt, cid, "welcome-1")
    [sent] = [e for e in tap.events("email.sent") if e["detail"]["message_id"] == m["message_id"]]
    assert m["status"] == "sent" and len(sent_emails(ACCOUNT, REGION)) == 1  # sent once, announced once


def test_a_permanent_fault_records_the_failing_state(rt, tap, inject):
    rule = inject("dynamodb", "PutItem", aws_error("ValidationException", "One or more parameter values were invalid"),
                  times=99, when=message_item)
    cid = signup(rt, "hal@example.com")
    assert rt.advance(HOUR)
    assert rule["raised"] == 1  # not retried
    status, states = journey(rt, "welcome", cid)
    assert status == "FAILED" and states[-2:] == ["Record failure", "Failed"]
    [failed] = tap.events("funnel.failed")
    assert failed["detail"]["step"] == "Send welcome-1"
    assert sent_emails(ACCOUNT, REGION) == []


def test_a_step_that_finds_its_claim_held_by_a_live_attempt_asks_to_be_retried(rt):
    cid = signup(rt, "ida@example.com")
    [ex] = executions(rt)
    m = message(rt, cid, "welcome-1")
    rt.client("dynamodb").update_item(TableName="ContactsTable", Key={"pk": {"S": cid}, "sk": {"S": m["sk"]}},
                                      UpdateExpression="SET #s = :s, lease_until = :l",
                                      ExpressionAttributeNames={"#s": "status"},
                                      ExpressionAttributeValues={":s": {"S": "sending"}, ":l": {"N": "9e12"}})
    payload = {"action": "send", "funnel": "welcome", "contact_id": cid, "execution": ex["executionArn"],
               "state": "Send welcome-1", "template": "welcome-1"}
    with pytest.raises(TransientError):
        rt.invoke("SequenceStepFunction", payload)
    assert len(sent_emails(ACCOUNT, REGION)) == 1

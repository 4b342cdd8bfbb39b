"""Least privilege that is also enough: every AWS action each function performs while the
funnels run is granted by that function's own policies in template.yaml (SAM policy templates
expanded by their published definitions). A call a policy forgot would fail only on AWS."""
import threading

import botocore.client
import pytest
from botocore.exceptions import ClientError
from test_funnels import click, message, open_email, order, publish, signup

from funnelpilot import emails, tokens

# The SAM policy templates template.yaml uses, as AWS SAM defines them (actions only).
SAM_POLICY_TEMPLATES = {
    "DynamoDBCrudPolicy": {"dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Scan",
                           "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem",
                           "dynamodb:BatchGetItem", "dynamodb:DescribeTable", "dynamodb:ConditionCheckItem"},
    "DynamoDBReadPolicy": {"dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchGetItem",
                           "dynamodb:DescribeTable"},
    "EventBridgePutEventsPolicy": {"events:PutEvents"},
    "LambdaInvokePolicy": {"lambda:InvokeFunction"},
    "StepFunctionsExecutionPolicy": {"states:StartExecution"},
    "AWSSecretsManagerGetSecretValuePolicy": {"secretsmanager:GetSecretValue"},
    "SSMParameterReadPolicy": {"ssm:DescribeParameters", "ssm:GetParameters", "ssm:GetParameter",
                               "ssm:GetParametersByPath"},
}
_TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}


def granted(rt, function: str) -> set[str]:
    actions = set()
    for policy in rt.template.doc["Resources"][function]["Properties"].get("Policies", []):
        for name, value in policy.items():
            if name == "Statement":
                for statement in value:
                    listed = statement["Action"]
                    actions |= {listed} if isinstance(listed, str) else set(listed)
            else:
                actions |= SAM_POLICY_TEMPLATES[name]
    return actions


@pytest.fixture
def calls(rt, monkeypatch):
    """(function, IAM action) of every AWS call made inside a function invocation."""
    seen, current = set(), threading.local()
    original_call, original_hook = botocore.client.BaseClient._make_api_call, rt.invoke_hook

    def record(client, operation, params):
        function = getattr(current, "function", None)
        if function:
            prefix = client.meta.service_model.signing_name
            if operation == "TransactWriteItems":
                seen.update((function, f"dynamodb:{_TRANSACT[next(iter(item))]}") for item in params["TransactItems"])
            else:
                seen.add((function, f"{prefix}:{operation}"))
        return original_call(client, operation, params)

    def hook(function, call):
        outer = getattr(current, "function", None)
        current.function = function
        try:
            return call() if original_hook is None else original_hook(function, call)
        finally:
            current.function = outer

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    rt.invoke_hook = hook
    yield seen
    rt.invoke_hook = original_hook


def test_every_call_the_funnels_make_is_allowed_by_the_functions_own_policies(rt, calls):
    ann = signup(rt, "ann@example.com", lead_magnet="seo-ebook")
    rt.advance(600)
    click(rt, ann, "delivery-1", "/download/")  # resumes a wait_for (router: SendTaskSuccess)
    open_email(rt, ann, "welcome-1")
    rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": "pv-1", "email": "ann@example.com",
                                          "path": "/pricing", "title": "Pricing"},
            headers={"x-api-key": rt.template.parameters["EventsApiKey"]})
    assert rt.settle() and rt.advance(2 * 86400)
    order(rt, "ann@example.com")  # a goal: the router stops welcome (history, StopExecution)
    bo = signup(rt, "bo@example.com")
    assert rt.advance(3 * 86400 + 3600)
    publish(rt, "contact.inactive", bo, days=30)
    assert rt.advance(11 * 86400)  # re-engagement, then sunset suppresses
    cy = signup(rt, "cy@example.com")
    welcome = message(rt, cy, "welcome-1")["message_id"]
    assert rt.http("POST", f"/u/{tokens.sign('u', cy, welcome)}", form={"List-Unsubscribe": "One-Click"}).status == 200
    rejected = ClientError({"Error": {"Code": "MessageRejected", "Message": "injected"}}, "SendRawEmail")

    def reject(**_):
        raise rejected

    ses = emails._ses()
    ses.meta.events.register("before-call.ses.SendRawEmail", reject)
    try:
        signup(rt, "dee@example.com")  # welcome-1 fails for good: Record failure (the fail step)
        assert rt.advance(60)
    finally:
        ses.meta.events.unregister("before-call.ses.SendRawEmail", reject)
    admin = {"x-api-key": rt.admin_key}
    assert rt.http("GET", "/funnels/welcome/report", headers=admin).status == 200
    assert rt.http("GET", f"/contacts/{ann}/export", headers=admin).status == 200
    assert rt.http("DELETE", f"/contacts/{ann}", headers=admin).status == 204
    assert rt.settle()

    functions = {f for f, _ in calls}
    assert {"SignupFunction", "SequenceStepFunction", "FunnelRouterFunction", "TrackClickFunction",
            "MetricsFunction", "ReportFunction", "AdminFunction"} <= functions
    actions = {a for _, a in calls}
    assert {"states:SendTaskSuccess", "states:StopExecution", "states:GetExecutionHistory"} <= actions
    missing = sorted((f, a) for f, a in calls if a not in granted(rt, f))
    assert missing == [], f"template.yaml does not allow: {missing}"

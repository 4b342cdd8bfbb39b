"""What keeps the local runtime cheap, counted (never timed): boto3 clients are made once per
process, not per runtime nor per Step Functions Task, and the pollers ask moto nothing while
there is nothing to read."""
from collections import Counter

import botocore.client
import botocore.session
from conftest import START, executions, history
from test_funnels import sent, signup

from funnelpilot_local.runtime import ROOT, Runtime

DAY = 86_400


def test_a_journey_of_many_tasks_and_a_second_stack_make_no_new_client(rt, tmp_path, monkeypatch):
    made, original = Counter(), botocore.session.Session.create_client

    def create_client(self, service_name, *args, **kwargs):
        made[service_name] += 1
        return original(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", create_client)
    cid = signup(rt)
    assert rt.advance(5 * DAY)
    tasks = sum(e["type"] == "LambdaFunctionScheduled" for ex in executions(rt)
                for e in history(rt, ex["executionArn"]))
    assert tasks >= 3 and len(sent(rt, cid)) >= 2  # welcome-1, welcome-2, ...
    assert made["lambda"] <= 1  # Step Functions' Lambda client: one for every Task (at most made now)
    made.clear()
    rt.stop()  # the fixture's stop after this is a no-op
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "second") as second:
        signup(second, "bo@example.com")
        assert len(executions(second)) == 1
    assert made["lambda"] == made["stepfunctions"] == made["dynamodb"] == made["events"] == 0, made


def test_idle_pollers_make_no_aws_call(rt, monkeypatch):
    signup(rt)
    calls, original = Counter(), botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        calls[operation] += 1
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    for _ in range(50):  # nothing queued, no stream record, no schedule: nothing to ask
        assert rt.pump() == 0 and rt.settle()
    assert calls == Counter()

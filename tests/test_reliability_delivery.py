"""At-least-once delivery: every EventBridge consumer and every funnel Task fed each input
twice changes nothing (no second email, score, metric, segment event or execution), and
what keeps failing lands in the dead-letter queue an alarm watches."""
import json
import warnings

import pytest
from conftest import EventTap
from reliability import audience, task_inputs, world

from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import load_yaml

TEMPLATE = load_yaml(ROOT / "template.yaml")


@pytest.fixture
def srt(tmp_path):
    """Stepped time: the duplicates arrive at the simulated instant of the originals, as
    EventBridge and Lambda retries do (seconds or minutes later, not simulated days)."""
    with Runtime(ROOT, stepped=True, start=1_772_409_600.0, state_dir=tmp_path / "local") as runtime:
        yield runtime


def test_every_eventbridge_delivery_twice_changes_nothing(srt):
    rt, tap = srt, EventTap(srt)
    audience(rt)
    before = world(rt, tap)
    delivered = [(arn, payload) for arn, payload in rt.delivered if ":sqs:" not in arn]  # not the test tap
    targets = {arn.rsplit(":", 1)[-1] for arn, _ in delivered}
    consumers = {lid for lid, res in TEMPLATE["Resources"].items()
                 if any(e["Type"] == "EventBridgeRule" for e in (res.get("Properties", {}).get("Events") or {}).values())}
    assert {"FunnelRouterFunction", "ScoreFunction", "SegmentFunction", "MetricsFunction"} <= targets
    if consumers - targets:
        warnings.warn(f"reliability.audience() does not reach {sorted(consumers - targets)}: extend it", stacklevel=1)
    for arn, payload in delivered:
        rt._deliver(arn, json.loads(json.dumps(payload)))
    after = world(rt, tap)
    assert after == before
    assert rt.errors == []


def test_every_funnel_task_invoked_twice_changes_nothing(rt, tap):
    audience(rt)
    before = world(rt, tap)
    tasks = task_inputs(rt)
    assert tasks and before["emails"] >= 3
    for function, payload in tasks:
        rt.invoke(function, payload)
    assert world(rt, tap) == before


def test_failed_deliveries_land_in_the_watched_dead_letter_queue(rt, tap):
    router = rt.functions["FunnelRouterFunction"]
    router.handler  # noqa: B018 - load the module, then break it
    calls = []

    def broken(event, context):
        calls.append(event)
        raise RuntimeError("downstream outage")

    router.module.handler = broken
    rt.http("POST", "/signup", json_body={"email": "dl@example.com", "consent": True, "list": "test-single"})
    assert rt.settle(timeout=30)
    assert len(calls) == 1  # Lambda's async queue retries a function error 1 minute later, then 2 more
    rt.advance(59)
    assert len(calls) == 1
    rt.advance(1)
    assert len(calls) == 2
    rt.advance(119)
    assert len(calls) == 2
    rt.advance(1)
    assert len(calls) == 3  # first attempt + EventInvokeConfig.MaximumRetryAttempts (2)
    sqs = rt.client("sqs")
    url = sqs.get_queue_url(QueueName="DeadLetterQueue")["QueueUrl"]
    [msg] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"]).get("Messages", [])
    assert json.loads(msg["Body"]) == calls[0]  # the original input, ready for a redrive
    assert "downstream outage" in msg["MessageAttributes"]["ErrorMessage"]["StringValue"]


def _queue_alarmed(queue_lid: str) -> bool:
    for res in TEMPLATE["Resources"].values():
        if res["Type"] == "AWS::CloudWatch::Alarm":
            dims = res["Properties"].get("Dimensions", [])
            if any(d["Name"] == "QueueName" and d["Value"] == {"Fn::GetAtt": [queue_lid, "QueueName"]} for d in dims):
                return res["Properties"].get("AlarmActions") not in (None, [])
    return False


def _queue_of(arn_ref) -> str:
    assert isinstance(arn_ref, dict) and "Fn::GetAtt" in arn_ref, arn_ref
    return arn_ref["Fn::GetAtt"][0]


def test_every_async_consumer_has_retries_and_an_alarmed_dead_letter_queue():
    """template.yaml: each EventBridge rule target has RetryPolicy + DeadLetterConfig, each
    function invoked by a rule has a DeadLetterQueue (or OnFailure) and retry settings, and
    an alarm with an action watches every such queue."""
    found = 0
    for lid, res in TEMPLATE["Resources"].items():
        props = res.get("Properties", {})
        rules = {k: e for k, e in (props.get("Events") or {}).items() if e["Type"] in ("EventBridgeRule", "Schedule",
                                                                                      "ScheduleV2")}
        for name, event in rules.items():
            found += 1
            ep = event["Properties"]
            assert "RetryPolicy" in ep, f"{lid}.{name}: add RetryPolicy"
            assert _queue_alarmed(_queue_of(ep.get("DeadLetterConfig", {}).get("Arn"))), \
                f"{lid}.{name}: add DeadLetterConfig: {{Arn: !GetAtt DeadLetterQueue.Arn}}"
        if rules and res["Type"] == "AWS::Serverless::Function":
            on_failure = props.get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure", {})
            target = on_failure.get("Destination") or props.get("DeadLetterQueue", {}).get("TargetArn")
            assert _queue_alarmed(_queue_of(target)), \
                f"{lid}: add DeadLetterQueue: {{Type: SQS, TargetArn: !GetAtt DeadLetterQueue.Arn}}"
            assert "MaximumRetryAttempts" in props.get("EventInvokeConfig", {}), f"{lid}: add EventInvokeConfig"
        if res["Type"] == "AWS::Events::Rule":
            for target in props["Targets"]:
                found += 1
                assert "RetryPolicy" in target and _queue_alarmed(_queue_of(target.get("DeadLetterConfig", {}).get("Arn"))), \
                    f"{lid}: target {target['Id']} needs RetryPolicy and DeadLetterConfig"
    assert found

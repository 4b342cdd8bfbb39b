"""Helpers of the reliability tests: drive the stack like an audience, snapshot everything
it stores and sends, replay deliveries and Task invocations."""
import json
import re
from collections import Counter
from email import message_from_bytes, policy

from funnelpilot.local.moto_adapter import sent_emails
from funnelpilot.local.template import ACCOUNT, REGION

_URL = re.compile(r"https?://[^\s\"'<>]+")


def sent_count() -> int:
    """Emails SES accepted (by SES message id: a duplicate send is counted, not overwritten)."""
    return len(sent_emails(ACCOUNT, REGION))


def tables(rt) -> dict[str, list[str]]:
    ddb = rt.client("dynamodb")
    out = {}
    for name in ddb.list_tables()["TableNames"]:
        items = [json.dumps(i, sort_keys=True) for page in ddb.get_paginator("scan").paginate(TableName=name)
                 for i in page["Items"]]
        out[name] = sorted(items)
    return out


def world(rt, tap) -> dict:
    """Everything a duplicate must not change: stored items, emails sent, events emitted."""
    assert rt.settle(timeout=60)
    return {"tables": tables(rt), "emails": sent_count(),
            "events": Counter(e["detail-type"] for e in tap.events())}


def links(rt) -> list[str]:
    """Paths of every link (under the public URL) in every email sent so far."""
    base = rt.public_url.rstrip("/")
    out = []
    for path in sorted(rt.outbox.glob("*.eml")):
        mail = message_from_bytes(path.read_bytes(), policy=policy.default)
        html = mail.get_body(("html",))
        text = (html.get_content() if html else "") + " " + str(mail.get("List-Unsubscribe", ""))
        out += [u[len(base):].replace("&amp;", "&") for u in _URL.findall(text) if u.startswith(base + "/")]
    return out


def routed(rt, method: str, path: str) -> bool:
    return any(r.match(method, path.partition("?")[0]) is not None for r in rt.routes)


def audience(rt, n: int = 3) -> list[str]:
    """Signups (one person twice), then every open and click route the emails carry."""
    ids = [rt.http("POST", "/signup", json_body={"email": f"p{i}@example.com", "consent": True,
                                                 "first_name": f"P{i}"}).json()["contact_id"] for i in range(n)]
    rt.http("POST", "/signup", form={"email": "P0@example.com", "consent": "true", "list": "vip"})
    assert rt.settle(timeout=60)
    for path in links(rt):
        if path.startswith(("/o/", "/c/")) and routed(rt, "GET", path):
            rt.http("GET", path, headers={"user-agent": "Mozilla/5.0"})
    assert rt.settle(timeout=60)
    return ids


def task_inputs(rt) -> list[tuple[str, dict]]:
    """(function, payload) of every Lambda call the state machines made, from their histories."""
    sfn = rt.client("stepfunctions")
    out = []
    for arn in rt.state_machine_arns():
        for ex in sfn.list_executions(stateMachineArn=arn)["executions"]:
            for e in sfn.get_execution_history(executionArn=ex["executionArn"], maxResults=1000)["events"]:
                if "lambdaFunctionScheduledEventDetails" in e:
                    d = e["lambdaFunctionScheduledEventDetails"]
                    out.append((d["resource"].split(":function:")[-1], json.loads(d["input"])))
                elif e.get("taskScheduledEventDetails", {}).get("resourceType") == "lambda":
                    params = json.loads(e["taskScheduledEventDetails"]["parameters"])
                    out.append((params["FunctionName"].split(":function:")[-1].split(":")[0], params["Payload"]))
    return out

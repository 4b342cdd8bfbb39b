"""Outbound webhooks: subscriptions (infra/webhooks.yaml) and the `webhook` funnel step, delivered
through EventBridge API destinations, which the local runtime calls as EventBridge would: a real
HTTP endpoint on 127.0.0.1 receives them here."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SINGLE, START, entered_states, executions, ip_for

from funnelpilot.channels import webhooks
from funnelpilot.funnel_spec import FunnelError, load_all, parse
from funnelpilot_local import compiler
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import Template


class Endpoint:
    """An HTTP endpoint answering, per path, the statuses of ``script[path]`` in turn (then 200; a
    status may come with a Retry-After: ``(429, "120")``), recording every request."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                queued = endpoint.script.get(self.path) or [200]
                status, retry_after = (queued.pop(0), None) if not isinstance(queued[0], tuple) else queued.pop(0)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self.server.server_port}"  # https in the file: the runtime calls loopback over http
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.server.shutdown()


CONFIG = """subscriptions:
  crm:
    url: {url}/crm
    events: [order.placed]
    fields: [email, first_name, company]
  analytics:
    url: {url}/analytics
    events: [order.placed, contact.subscribed]
    auth: {{basic: funnelpilot}}
    secret: AnalyticsSecretValue
"""


def stack(tmp_path: Path, config: str, funnels: dict[str, str] | None = None, edit=None) -> Path:
    """template.yaml with the webhook blocks of ``config`` (and the test funnels ``funnels``, id ->
    YAML, next to the shipped ones), written under tmp_path."""
    content = tmp_path / "content"
    (content / "funnels").mkdir(parents=True)
    (content / "webhooks.yaml").write_text(config)
    (content / "fields.yaml").write_text((ROOT / "infra" / "fields.yaml").read_text())  # custom fields may be listed
    text = (ROOT / "template.yaml").read_text()
    if funnels:
        shipped = load_all(ROOT / "infra" / "funnels")
        for fid, source in funnels.items():
            path = content / "funnels" / f"{fid}.yaml"
            path.write_text(source)
            funnel, errors = parse(path)
            assert not errors, errors
            shipped[fid] = funnel
            asl = tmp_path / f"{fid}.asl.json"
            asl.write_text(compiler.to_json(compiler.compile_funnel(funnel)))
        block = compiler.template_block(shipped)
        for fid in funnels:
            block = block.replace(f"DefinitionUri: infra/statemachines/{fid}.asl.json", f"DefinitionUri: {tmp_path}/{fid}.asl.json")
        text = compiler.splice(text, block)
    text = compiler.with_webhooks(text, webhooks.load(content / "webhooks.yaml"))
    path = tmp_path / "template.yaml"
    path.write_text(edit(text) if edit else text)
    return path


@pytest.fixture
def make_rt(tmp_path):
    """A strict stepped runtime on a template of the test's own (``stack``); fails the test on any IAM denial."""
    runtimes = []

    def make(template: Path, **parameters) -> Runtime:
        rt = Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", template=template,
                     parameters=parameters or None)
        runtimes.append(rt)
        return rt.__enter__()

    yield make
    for rt in runtimes:
        rt.stop()
        assert not rt.denied, "\n".join(map(str, rt.denied))


def signup(rt, email="pia@example.com") -> str:
    resp = rt.http("POST", "/signup", json_body={"email": email, "consent": True, "first_name": "Pia", "list": SINGLE,
                                                 "company": "Acme"}, source_ip=ip_for(email))
    assert resp.status == 202
    assert rt.settle()
    return resp.json()["contact_id"]


def order(rt, email="pia@example.com", n=1):
    resp = rt.http("POST", "/events", json_body={
        "type": "order.placed", "event_id": f"order-{n:08d}", "email": email, "order_id": f"o-{n}", "amount": 49,
        "currency": "EUR", "items": [{"sku": "core", "quantity": 1, "price": 49}]},
        headers={"x-api-key": rt.template.parameters["EventsApiKey"]})
    assert resp.status == 202
    assert rt.settle()


def test_an_order_reaches_each_subscription_with_only_the_fields_it_lists(tmp_path, endpoint, make_rt):
    rt = make_rt(stack(tmp_path, CONFIG.format(url=endpoint.url)))
    cid = signup(rt)
    by_path = {r["path"]: r for r in endpoint.requests}
    assert set(by_path) == {"/analytics"}  # contact.subscribed: analytics only
    order(rt)
    crm = [r for r in endpoint.requests if r["path"] == "/crm"]
    [request] = crm
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["user-agent"] == "Amazon/EventBridge/ApiDestinations"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["x-funnelpilot-secret"] == "local-CrmWebhookSecret"  # the connection's API key: the stack parameter
    body = request["body"]
    assert body["webhook"] == "crm" and body["type"] == "order.placed" and body["contact_id"] == cid
    assert body["contact"] == {"email": "pia@example.com", "first_name": "Pia", "company": "Acme"}  # a fields.yaml field too
    assert body["data"]["amount"] == 49 and body["data"]["order_id"] == "o-1"
    analytics = [r for r in endpoint.requests if r["path"] == "/analytics"]
    assert [r["body"]["type"] for r in analytics] == ["contact.subscribed", "order.placed"]
    for r in analytics:  # no fields listed: nothing about the person but their id
        assert "contact" not in r["body"] and "pia" not in json.dumps(r["body"]).lower()
        auth = {k.lower(): v for k, v in r["headers"].items()}["authorization"]
        assert auth == "Basic " + __import__("base64").b64encode(b"funnelpilot:local-AnalyticsSecretValue").decode()
    assert len({r["body"]["id"] for r in endpoint.requests}) == 3
    assert not rt.errors


def test_a_5xx_is_retried_on_the_clock_with_the_same_body(tmp_path, endpoint, make_rt):
    rt = make_rt(stack(tmp_path, CONFIG.format(url=endpoint.url)))
    signup(rt)
    endpoint.requests.clear()
    endpoint.script = {"/crm": [500, 503]}  # crm's first two attempts fail
    order(rt)
    assert [r["path"] for r in endpoint.requests].count("/crm") == 1
    assert rt.advance(1)
    assert [r["path"] for r in endpoint.requests].count("/crm") == 2  # retried 1 s later
    assert rt.advance(2)
    crm = [r["body"] for r in endpoint.requests if r["path"] == "/crm"]
    assert len(crm) == 3 and crm[0] == crm[1] == crm[2]  # the third got 200: nothing more
    assert rt.advance(600) and len([r for r in endpoint.requests if r["path"] == "/crm"]) == 3
    assert not rt.errors and not rt.dead_letters


def test_retry_after_delays_the_retry_and_a_negative_one_ends_it(tmp_path, endpoint, make_rt):
    rt = make_rt(stack(tmp_path, CONFIG.format(url=endpoint.url)))
    signup(rt)
    endpoint.requests.clear()
    endpoint.script = {"/crm": [(429, "120")], "/analytics": [(503, "-1")]}
    order(rt)
    assert rt.advance(119)
    assert [r["path"] for r in endpoint.requests].count("/crm") == 1  # not at 1 s: the endpoint asked for 120
    assert rt.advance(2)
    assert [r["path"] for r in endpoint.requests].count("/crm") == 2
    assert [r["path"] for r in endpoint.requests].count("/analytics") == 1
    [dead] = rt.dead_letters  # analytics: a negative Retry-After stops the retries
    assert "WebhookAnalyticsDestination" in dead["target"]
    rt.errors.clear()


def test_a_4xx_is_not_retried_and_goes_to_the_dead_letter_queue(tmp_path, endpoint, make_rt):
    rt = make_rt(stack(tmp_path, CONFIG.format(url=endpoint.url)))
    cid = signup(rt)
    endpoint.requests.clear()
    endpoint.script = {"/crm": [400]}
    order(rt)
    assert rt.advance(3600)
    crm = [r for r in endpoint.requests if r["path"] == "/crm"]
    assert len(crm) == 1
    [dead] = rt.dead_letters
    assert ":api-destination/WebhookCrmDestination/" in dead["target"] and dead["input"]["contact_id"] == cid
    sqs = rt.client("sqs")
    url = sqs.get_queue_url(QueueName="DeadLetterQueue")["QueueUrl"]
    [msg] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    assert json.loads(msg["Body"])["id"] == crm[0]["body"]["id"]
    assert "400" in msg["MessageAttributes"]["ErrorMessage"]["StringValue"]
    rt.errors.clear()


def test_an_endpoint_that_never_answers_is_retried_until_the_policy_ends(tmp_path, make_rt):
    config = "subscriptions:\n  gone:\n    url: https://127.0.0.1:9/hook\n    events: [order.placed]\n"
    rt = make_rt(stack(tmp_path, config, edit=lambda t: t.replace(
        "MaximumRetryAttempts: 185, MaximumEventAgeInSeconds: 86400 }\n          DeadLetterConfig",
        "MaximumRetryAttempts: 3, MaximumEventAgeInSeconds: 86400 }\n          DeadLetterConfig")))
    signup(rt)
    order(rt)
    assert rt.advance(60)
    attempts = [a for a in rt.api_destinations.attempts if a.url.endswith("/hook")]
    assert len(attempts) == 4 and all(a.status is None and a.error for a in attempts)  # 1 + 3 retries
    assert len(rt.dead_letters) == 1
    rt.errors.clear()


def test_strict_iam_the_target_role_must_allow_invoking_the_destination(tmp_path, endpoint, make_rt):
    rt = make_rt(stack(tmp_path, CONFIG.format(url=endpoint.url), edit=lambda t: t.replace(
        "Action: events:InvokeApiDestination\n                Resource:\n                  - !GetAtt WebhookAnalyticsDestination.Arn\n",
        "Action: events:InvokeApiDestination\n                Resource:\n")))
    signup(rt)
    order(rt)
    assert [r["path"] for r in endpoint.requests] == ["/crm"]  # analytics' role lost it: nothing sent
    assert {d.action for d in rt.denied} == {"events:InvokeApiDestination"}
    assert len(rt.dead_letters) == 2  # contact.subscribed and order.placed to analytics
    rt.denied.clear()
    rt.errors.clear()


FUNNEL = """id: hot
trigger: custom.demo.requested
entry: always
steps:
  - tag: hot
  - webhook: {to: crm, fields: [first_name], data: {stage: hot}}
  - wait: 1 day
  - webhook: crm
"""


def test_a_webhook_step_delivers_from_the_funnel_merged_with_its_neighbour(tmp_path, endpoint, make_rt):
    config = f"subscriptions:\n  crm:\n    url: {endpoint.url}/crm\n    fields: [email, first_name]\n"
    rt = make_rt(stack(tmp_path, config, {"hot": FUNNEL}))
    cid = signup(rt)
    resp = rt.http("POST", "/events", json_body={"type": "custom.demo.requested", "event_id": "demo-00000001",
                                                 "contact_id": cid}, headers={"x-api-key": "local-EventsApiKey"})
    assert resp.status == 202
    assert rt.settle()
    [first] = endpoint.bodies()
    assert first["type"] == "funnel.webhook" and first["contact"] == {"first_name": "Pia"}  # the step narrowed it
    assert first["data"] == {"funnel": "hot", "step": "Tag hot + Webhook crm", "stage": "hot"}  # one Task for both
    assert rt.advance(86400)
    second = endpoint.bodies()[1]
    assert second["contact"] == {"email": "pia@example.com", "first_name": "Pia"}  # the subscription's fields
    [ex] = executions(rt, "hot")
    assert entered_states(rt, ex["executionArn"]) == ["Tag hot + Webhook crm", "Wait 1 day", "Webhook crm (2)"]
    assert first["id"] != second["id"]
    assert not rt.errors


def test_the_file_is_checked_at_compile_time_with_file_and_line(tmp_path):
    path = tmp_path / "webhooks.yaml"
    path.write_text("""subscriptions:
  crm:
    url: http://crm.example.com/hook
    events: [order.placd, email.delivered]
    fields: [email, phone]
  ok:
    url: https://ok.example.com/hook
    auth: {bearer: x}
    rate_per_second: 0
""")
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.load(path)
    lines = str(err.value).splitlines()
    assert f"{path}:3: subscription crm: url 'http://crm.example.com/hook': an https:// URL" in lines[0]
    assert any("unknown event 'order.placd' (did you mean 'order.placed'?)" in line for line in lines)
    assert any("'email.delivered': deliveries are counted in the reports, not published" in line for line in lines)
    assert any("unknown field 'phone'" in line for line in lines)
    assert any(line.startswith(f"{path}:7: subscription ok: auth:") for line in lines)
    assert any("rate_per_second" in line for line in lines)


def test_a_webhook_step_names_a_subscription_and_at_most_its_fields(tmp_path):
    (tmp_path / "funnels").mkdir()
    (tmp_path / "webhooks.yaml").write_text("subscriptions:\n  crm:\n    url: https://crm.example.com/h\n"
                                            "    fields: [first_name]\n")
    path = tmp_path / "funnels" / "x.yaml"
    path.write_text("id: x\ntrigger: order.placed\nsteps:\n  - webhook: crn\n  - webhook: {to: crm, fields: [email]}\n")
    funnel, errors = parse(path)
    assert funnel is None
    assert errors[0] == f"{path}:4: step 1 (webhook): no subscription 'crn' in webhooks.yaml (subscriptions: crm)"
    assert errors[1].startswith(f"{path}:5: step 2 (webhook): fields: a list among the subscription's own (first_name)")
    with pytest.raises(FunnelError):
        load_all(tmp_path / "funnels")


def test_no_subscription_no_resource():
    params, resources = compiler.webhook_blocks({})
    assert params == "\n".join(compiler.WEBHOOK_PARAMETERS) + "\n"
    assert resources == "\n".join(compiler.WEBHOOK_RESOURCES) + "\n"
    subs = webhooks.load(ROOT / "infra" / "webhooks.yaml")  # the shipped file has none; yours may
    shipped = Template.load(ROOT)
    assert set(shipped.of_type("AWS::Events::ApiDestination")) == {f"{s.logical_id}Destination" for s in subs.values()}
    assert ("WebhookFunction" in shipped.resources) == any(s.events for s in subs.values())


def test_the_cost_model_prices_the_webhooks(tmp_path):
    from test_costs import lifecycle_usage

    from funnelpilot_local import costs

    template = Template.load(ROOT, path=stack(tmp_path, CONFIG.format(url="https://crm.example.com")))
    assert costs.unpriced(template) == set()
    usage = lifecycle_usage(60)
    sent = usage["emails"]["to_contacts"]
    usage["totals"]["api_destination_invocations"] = 2 * sent  # two webhook calls per email
    est = costs.estimate(usage, 10_000, template=template)
    [connections] = [x for x in est["lines"] if x["item"].startswith("EventBridge connections")]
    assert connections["item"] == "EventBridge connections (2)" and connections["cost"] == 0  # secrets included
    [calls] = [x for x in est["lines"] if x["item"] == "EventBridge API destination calls"]
    assert calls["quantity"] == pytest.approx(2 * est["emails"])
    assert calls["cost"] == pytest.approx(2 * est["emails"] * 0.20 / 1e6)
    del usage["totals"]["api_destination_invocations"]  # measured before webhooks existed: no such calls
    assert [x for x in costs.estimate(usage, 10_000, template=template)["lines"]
            if x["item"] == "EventBridge API destination calls"][0]["cost"] == 0


def test_names_that_would_clash_are_refused(tmp_path):
    path = tmp_path / "webhooks.yaml"
    path.write_text("subscriptions:\n  sales-alert:\n    url: https://a.example.com/\n"
                    "  ab-:\n    url: https://a.example.com/\n"
                    "  one:\n    url: https://a.example.com/\n    secret: SharedSecretName\n"
                    "  two:\n    url: https://b.example.com/\n    secret: SharedSecretName\n")
    with pytest.raises(webhooks.WebhookError) as err:
        webhooks.load(path)
    text = str(err.value)
    assert "'sales-alert': sales-alert is the Slack alert's" in text and "'ab-': a name is words" in text
    assert f"{path}:10: subscription two: secret SharedSecretName is one's too" in text
    path.write_text("subscriptions:\n  crm:\n    url: https://a.example.com/\n    secret: EventsApiKey\n")
    with pytest.raises(compiler.CompileError, match="secret EventsApiKey is a parameter of template.yaml already"):
        compiler.with_webhooks((ROOT / "template.yaml").read_text(), webhooks.load(path))

"""The welcome funnel executed for real by moto's Step Functions interpreter."""
import re
from email import message_from_bytes, policy

from conftest import entered_states, executions, history


def read_outbox(rt):
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]


def test_signup_sends_one_welcome_email(rt, tap):
    cid = rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True, "list": "test-single",
                                                "first_name": "Ann"}).json()["contact_id"]
    assert rt.settle()
    [ex] = executions(rt)
    assert cid not in ex["name"] and ex["status"] == "RUNNING"  # the next email goes in 2 days
    assert entered_states(rt, ex["executionArn"]) == ["Send welcome-1", "Wait 2 days"]
    assert "LambdaFunctionSucceeded" in [e["type"] for e in history(rt, ex["executionArn"])]
    [mail] = read_outbox(rt)
    assert mail["To"] == "ann@example.com"
    assert mail["Subject"] == "Welcome, Ann!"
    assert mail["List-Unsubscribe"].startswith("<http://127.0.0.1:3000/u/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Id"] == "test-single <test-single.example.com>"  # the list of the signup (no title: its name)
    assert mail["From"] == "Ada at Example <hello@example.com>" and mail["Reply-To"] == "hello@example.com"  # FromName; ReplyTo empty
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert "Welcome, Ann!" in html and "Welcome, Ann!" in text
    assert (rt.outbox / f"{mail['X-Funnelpilot-Message-Id']}.eml").exists()
    [sent] = tap.events("email.sent")
    assert sent["detail"]["contact_id"] == cid and sent["detail"]["funnel"] == "welcome"


def test_second_signup_of_same_person_sends_nothing_more(rt):
    rt.http("POST", "/signup", json_body={"email": "bo@example.com", "consent": True, "list": "test-single"})
    assert rt.settle()
    rt.http("POST", "/signup", form={"email": "BO@example.com", "consent": "true", "list": "test-single"})
    assert rt.settle()
    assert len(executions(rt)) == 1
    assert len(read_outbox(rt)) == 1


def test_duplicate_subscribed_delivery_starts_one_execution(rt):
    rt.http("POST", "/signup", json_body={"email": "cy@example.com", "consent": True, "list": "test-single"})
    # at-least-once delivery: the same event handed to the funnel router twice
    queued = list(rt._deliveries.queue)
    for item in queued:
        rt._deliver(item[0], item[1])
    assert rt.settle()
    assert len(executions(rt)) == 1
    assert len(read_outbox(rt)) == 1


def test_template_injection_and_html_in_names_stay_literal(rt):
    rt.http("POST", "/signup", json_body={"email": "dee@example.com", "consent": True, "list": "test-single",
                                          "first_name": "{{ 7*7 }}<script>x</script>"})
    assert rt.settle()
    [mail] = read_outbox(rt)
    html = mail.get_body(("html",)).get_content()
    text = re.sub(r'(href|src)="[^"]*"', "", html)  # signed links may hold "49" by chance
    assert "{{ 7*7 }}" in html and not re.search(r"\b49\b", text)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert mail["Subject"] == "Welcome, {{ 7*7 }}<script>x</script>!"

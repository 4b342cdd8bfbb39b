"""`funnelpilot preview` writes an email as the send path builds it (.html, .txt, .eml) and prints
what spam filters look at; `funnelpilot send-test` sends it untracked with [TEST] in the subject
(locally: into .local/outbox/). Through the CLI's real entry point, in local mode."""
import email
import re
from email import policy

import pytest
from test_funnels import signup

from funnelpilot import tokens
from funnelpilot.channels import mime
from funnelpilot_local import cli, email_check, preview
from funnelpilot_local.contacts_cli import TABLE_FILE, save_table
from funnelpilot_local.runtime import LOCAL_SECRET, ROOT

URL = re.compile(r"https?://\S+")


def parsed(path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


def body(msg, part: str) -> str:
    return msg.get_body((part,)).get_content().replace("\r\n", "\n")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The CLI's .local/ in a folder of the test's own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_preview_writes_the_html_text_and_eml_and_prints_the_facts(workdir, capsys):
    assert cli.main(["preview", "welcome-1", "--sample", "--out", "out"]) == 0
    out = capsys.readouterr().out
    msg = parsed(workdir / "out" / "welcome-1.eml")
    html, text = body(msg, "html"), body(msg, "plain")
    assert (workdir / "out" / "welcome-1.html").read_text() == html
    assert (workdir / "out" / "welcome-1.txt").read_text() == text
    assert msg["Subject"] == "Welcome, Ada!" and msg["To"] == "ada@example.com"
    for header in ("From", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        assert msg[header], header
    site, public = preview.local_settings(ROOT)["SITE_URL"], preview.LOCAL_URL
    [click] = re.findall(rf'href="{re.escape(public)}/c/([^"]+)"', html)[1:2] or [None]  # [0] is the honeypot
    with email_check.content(ROOT, key=LOCAL_SECRET.encode()):
        assert click and tokens.verify("c", click, 3)[2] == "0"  # a real tracked link, signed with the local key
    assert f"tracked   {site}/guide" in out and "untracked http://127.0.0.1:3000/u/" in out
    assert "subject:   Welcome, Ada!" in out and "open pixel (1x1)" in out
    assert "preheader: Your free guide is inside, and here is what the next few emails will bring." in out
    assert re.search(r"size:      \d+\.\d KB \(HTML \d+ bytes, visible text \d+ bytes: text/HTML ratio 0\.\d\d\)", out)
    assert re.search(r"words:     \d+ in the HTML part, \d+ in the text part", out)


def test_preview_of_a_real_contact_is_the_message_the_send_path_sent(rt, workdir, capsys):
    cid = signup(rt, "zoe@example.com", first_name="Zoe", company="Zeta GmbH")
    [sent] = rt.outbox.glob("*.eml")
    save_table(rt, workdir / ".local" / TABLE_FILE)  # what `make serve` keeps
    assert cli.main(["preview", "welcome-1", "--contact", "zoe@example.com", "--out", "out"]) == 0
    real, shown = parsed(sent), parsed(workdir / "out" / "welcome-1.eml")
    assert shown["Subject"] == real["Subject"] == "Welcome, Zoe!" and shown["To"] == real["To"]
    assert shown["List-Id"] == real["List-Id"]
    assert [k for k in shown.keys()] == [k for k in real.keys()]  # the same headers, in the same order
    for part in ("plain", "html"):  # word for word, but for the links (signed per message; the site's host)
        assert URL.sub("URL", body(shown, part)) == URL.sub("URL", body(real, part))
    assert "Zeta GmbH" in body(shown, "plain")
    token = shown["List-Unsubscribe"].split("/u/", 1)[1].rstrip(">")
    assert tokens.verify("u", token, 2)[0] == cid  # the person's own unsubscribe link


def test_send_test_writes_an_untracked_test_email_to_the_outbox(workdir, capsys):
    assert cli.main(["send-test", "welcome-2", "--to", "me@example.org"]) == 0
    [path] = (workdir / ".local" / "outbox").glob("test-welcome-2-*.eml")
    assert str(path.relative_to(workdir)) in capsys.readouterr().out
    msg = parsed(path)
    assert msg["To"] == "me@example.org" and msg["Subject"].startswith("[TEST] ") and msg["X-Funnelpilot-Test"] == "true"
    html = body(msg, "html")
    assert "/c/" not in html and "/o/" not in html  # no tracked link, no open pixel, no honeypot
    assert "/blog/start-here" in html and "/c/" not in body(msg, "plain")


def test_the_confirmation_and_the_sales_alert_preview_too(workdir, capsys):
    assert cli.main(["preview", "confirm", "--out", "out"]) == 0
    assert "/confirm/" in (workdir / "out" / "confirm.txt").read_text()
    assert cli.main(["preview", "sales-alert", "--out", "out"]) == 0
    assert parsed(workdir / "out" / "sales-alert.eml")["Subject"] == "Sales alert: Ada viewed /pricing"


@pytest.mark.parametrize("argv, problem", [
    (["preview", "welcom-1"], "'welcom-1': not an email a funnel or funnelpilot sends"),
    (["preview", "welcome-1", "--contact", "nobody@example.com"], "--contact nobody@example.com: nobody"),
    (["send-test", "welcome-1", "--to", "not-an-address"], "--to 'not-an-address': not an email address"),
])
def test_mistakes_are_one_line_and_exit_2(workdir, capsys, argv, problem):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and "Traceback" not in err
    assert not (workdir / ".local" / "preview").exists()


def test_the_facts_warn_about_an_image_only_body_a_missing_text_part_and_links_to_nowhere(tmp_path):
    public, site = "http://127.0.0.1:3000", "https://example.com"
    html = (f'<html><body><img src="{site}/banner.png"><p>Sale!</p><a href="#">more</a> <a href="{site}/nope">x</a>'
            f'<img src="{public}/o/token" width="1" height="1" alt=""></body></html>')
    raw = mime.build(sender="hello@example.com", to="ada@example.com", subject="Sale", message_id="m1", headers={},
                     text="", html=html)
    with email_check.content(ROOT):  # the site's pages come from the checkout's infra/site.yaml
        facts = preview.describe(raw, [], email_check.LinkRules(ROOT), {"public_url": public, "site_url": site})
    warnings = "\n".join(facts["warnings"])
    assert "image-only body: an HTML part of 2" in warnings and "with 2 image(s)" in warnings and "HTML_IMAGE_ONLY_04" in warnings
    assert "no text part" in warnings and "image without alt text: https://example.com/banner.png" in warnings
    assert "link to nowhere (#)" in warnings and "/nope is not a page of the site" in warnings
    assert [i["open_pixel"] for i in facts["images"]] == [False, True] and facts["words"] == 3


def test_send_test_on_a_stack_goes_through_ses_from_the_stacks_sender_untracked(workdir, monkeypatch, capsys):
    """--stack: the settings of the stack's sequence-step function, SES with the caller's credentials
    and the X-Funnelpilot-Test header; moto stands in for the account (but for the one CloudFormation call
    naming the function: moto's CloudFormation needs openapi-spec-validator, which is not installed)."""
    import io
    import json
    import zipfile

    import boto3
    from moto import mock_aws

    from funnelpilot_local.moto_adapter import sent_emails
    from funnelpilot_local.template import ACCOUNT

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    env = {"PUBLIC_URL": "https://api.shop.example", "SITE_URL": "https://shop.example",
           "SENDER_EMAIL": "news@shop.example", "FROM_NAME": "Shop", "POSTAL_ADDRESS": "Shop Ltd, 2 High Street, Leeds",
           "SES_CONFIGURATION_SET": "shop-events"}
    with mock_aws():
        role = boto3.client("iam", region_name="eu-west-1").create_role(
            RoleName="step", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))["Role"]
        code = io.BytesIO()
        zipfile.ZipFile(code, "w").writestr("app.py", "")
        boto3.client("lambda", region_name="eu-west-1").create_function(
            FunctionName="shop-SequenceStepFunction-A1B2", Runtime="python3.12", Role=role["Arn"],
            Handler="app.handler", Code={"ZipFile": code.getvalue()}, Environment={"Variables": env})
        monkeypatch.setattr(preview, "step_function", lambda stack, region: f"{stack}-SequenceStepFunction-A1B2")
        boto3.client("ses", region_name="eu-west-1").verify_email_identity(EmailAddress="news@shop.example")
        assert cli.main(["send-test", "welcome-1", "--to", "me@example.org", "--stack", "shop",
                         "--region", "eu-west-1"]) == 0
        [(_, raw)] = sent_emails(ACCOUNT, "eu-west-1")
    assert "(from news@shop.example)" in capsys.readouterr().out
    msg = email.message_from_bytes(raw.encode() if isinstance(raw, str) else raw, policy=policy.default)
    assert msg["From"] == "Shop <news@shop.example>" and msg["To"] == "me@example.org"
    assert msg["Subject"] == "[TEST] Welcome, Ada!" and msg["X-Funnelpilot-Test"] == "true"
    html = body(msg, "html")
    assert 'href="https://shop.example/guide"' in html and "https://api.shop.example/c/" not in html
    assert "https://api.shop.example/o/" not in html and not (workdir / ".local" / "outbox").exists()


def test_ses_events_of_a_test_send_count_nothing_and_suppress_nobody(rt, tap):
    """The stack's SES identity has the stack's configuration set as its default, so SES publishes
    the events of a test send too: a bounce of a test sent to a person on the list leaves them be."""
    import json
    import uuid

    from funnelpilot import clock

    cid = signup(rt, "ann@example.com")
    recipient = "ann@example.com"
    headers = [{"name": "To", "value": recipient}, {"name": "Subject", "value": "[TEST] Welcome, Ann!"},
               {"name": "X-Funnelpilot-Message-Id", "value": "mpreview"}, {"name": "X-Funnelpilot-Test", "value": "true"}]
    for detail_type, kind, body in (
            ("Email Bounced", "Bounce", {"bounce": {"feedbackId": uuid.uuid4().hex, "bounceType": "Permanent",
                                                    "bounceSubType": "General", "timestamp": clock.iso(),
                                                    "bouncedRecipients": [{"emailAddress": recipient}]}}),
            ("Email Delivered", "Delivery", {"delivery": {"timestamp": clock.iso(), "recipients": [recipient]}})):
        detail = {"eventType": kind, "mail": {"timestamp": clock.iso(), "source": "hello@example.com",
                                              "messageId": uuid.uuid4().hex, "destination": [recipient],
                                              "headers": headers,
                                              "tags": {"ses:configuration-set": ["EmailConfigurationSet"]}}, **body}
        assert rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": detail_type,
                                                        "Detail": json.dumps(detail)}])["FailedEntryCount"] == 0
        assert rt.settle()
    profile = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                             Key={"pk": {"S": cid}, "sk": {"S": "PROFILE"}})["Item"]
    assert profile["status"]["S"] == "active"
    assert tap.events("email.bounced") == [] and tap.events("contact.suppressed") == []
    rows = rt.client("dynamodb").scan(TableName="MetricsTable")["Items"]
    assert not any("delivered" in row for row in rows)

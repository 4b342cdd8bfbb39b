"""`make funnels` renders every template in use before it writes anything: each kind of template
mistake fails it with the template's file:line, every mistake is listed, and no file changes."""
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import executions
from test_funnels import DAY, HOUR, journey, message, messages, sent, signup
from test_step_faults import aws_error, inject  # noqa: F401 - inject: the fixture

from funnelpilot.channels import emails
from funnelpilot.config import config
from funnelpilot_local import cli
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import ACCOUNT, REGION


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's content and template to break."""
    shutil.copytree(ROOT / "infra", tmp_path / "infra")
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    return tmp_path


def generated(project: Path) -> dict[Path, str]:
    """Everything `make funnels` may write: compiled machines, content versions, diagrams, template.yaml."""
    files = [project / "template.yaml", *(project / "infra" / "statemachines").glob("*"),
             *(project / "infra" / "emails" / "versions").glob("*/*"), *(project / "infra" / "diagrams").glob("*")]
    return {p: p.read_text() for p in files}


def in_body(project: Path, name: str, line: str) -> int:
    """Write ``line`` just inside the body block of ``infra/emails/NAME`` (of a project, or of an
    emails folder); the line number it lands on."""
    path = (project / "infra" / "emails" if (project / "infra").exists() else project) / name
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, text in enumerate(lines) if "{% block body %}" in text) + 1
    if lines[at - 1].rstrip().endswith("{% block body %}"):
        lines.insert(at, line + "\n")
        path.write_text("".join(lines))
        return at + 1
    raise AssertionError(f"{name}: no line ending with the body block")


def fails(project: Path, capsys) -> str:
    before = generated(project)
    assert cli.main(["funnels", "--root", str(project)]) == 2
    assert generated(project) == before  # nothing written, nothing removed
    return capsys.readouterr().err


def change(project: Path, name: str, old: str, new: str) -> int:
    """Replace ``old`` (once) in infra/emails/NAME; the line it was on."""
    path = project / "infra" / "emails" / name
    text = path.read_text()
    assert old in text, (name, old)
    path.write_text(text.replace(old, new, 1))
    return text[:text.index(old)].count("\n") + 1


def test_an_undefined_variable_is_its_template_line(project, capsys):
    line = in_body(project, "welcome-2.html.j2", "<p>Your code: {{ coupon_code }}</p>")
    err = fails(project, capsys)
    assert f"infra/emails/welcome-2.html.j2:{line}: 'coupon_code' is undefined" in err, err


def test_an_undefined_variable_in_the_layout_names_the_layout(project, capsys):
    path = project / "infra" / "emails" / "layout.txt.j2"
    path.write_text(path.read_text() + "Write to us at {{ postal_adress }}\n")
    line = path.read_text().count("\n")
    err = fails(project, capsys)
    assert f"infra/emails/layout.txt.j2:{line}: 'postal_adress' is undefined" in err, err


def test_a_mistake_only_a_contact_without_data_meets_is_found(project, capsys):
    """Sample contacts: Ada has every field, the second one only an address."""
    line = in_body(project, "welcome-1.html.j2", "<p>{{ lead_magnet.upper() }}</p>")
    err = fails(project, capsys)
    assert f"infra/emails/welcome-1.html.j2:{line}: " in err and "upper" in err, err


def test_a_syntax_error_is_its_line(project, capsys):
    line = in_body(project, "engagement-1.txt.j2", "{% endfor %}")
    err = fails(project, capsys)
    assert f"infra/emails/engagement-1.txt.j2:{line}: Encountered unknown tag 'endfor'" in err, err


def test_a_missing_subject_is_an_error(project, capsys):
    path = project / "infra" / "emails" / "welcome-3.txt.j2"
    text = path.read_text()
    start, end = text.index("{% block subject %}"), text.index("{% endblock %}", text.index("{% block subject %}"))
    path.write_text(text[:start] + text[end + len("{% endblock %}"):])
    err = fails(project, capsys)
    assert "infra/emails/welcome-3.txt.j2:1: no subject" in err, err


def test_an_empty_subject_is_an_error(project, capsys):
    text = (project / "infra" / "emails" / "reengage-1.txt.j2").read_text()
    subject = text[text.index("{% block subject %}") + len("{% block subject %}"):text.index("{% endblock %}")]
    line = change(project, "reengage-1.txt.j2", "{% block subject %}" + subject, "{% block subject %}")
    err = fails(project, capsys)
    assert f"infra/emails/reengage-1.txt.j2:{line}: the subject is empty" in err, err


def test_a_missing_part_of_a_funnel_email_is_the_funnel_files_line(project, capsys):
    (project / "infra" / "emails" / "welcome-3.html.j2").unlink()
    funnel = (project / "infra" / "funnels" / "welcome.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(funnel, 1) if "send: welcome-3" in text)
    err = fails(project, capsys)
    assert f"infra/funnels/welcome.yaml:{line}: " in err and "missing welcome-3.html.j2" in err, err


def test_a_missing_part_of_the_confirmation_is_an_error(project, capsys):
    (project / "infra" / "emails" / "confirm.html.j2").unlink()
    err = fails(project, capsys)
    assert "infra/emails/confirm.html.j2:1: missing: confirm.html.j2" in err, err


@pytest.mark.parametrize("href, problem", [
    ("#", "link to nowhere (#)"),
    ("", 'empty link (href="")'),
    ("/pricing", "relative link '/pricing'"),
    ("{{ site_url }}/no-such-page", "/no-such-page is not a page of the site (add it to infra/site.yaml's pages)"),
    ("{{ public_url }}/preferences", "/preferences is no public route of the HTTP API"),
    ("{{ public_url }}/contacts/{{ contact_id }}", "is no public route of the HTTP API"),  # an admin route
    ("javascript:alert(1)", "an email links with http(s), mailto: or tel:"),
])
def test_a_link_to_nowhere_is_an_error(project, capsys, href, problem):
    line = in_body(project, "welcome-2.html.j2", f'<p><a href="{href}">more</a></p>')
    err = fails(project, capsys)
    assert f"infra/emails/welcome-2.html.j2:{line}: " in err and problem in err, err


def test_links_that_go_somewhere_pass(project, capsys):
    in_body(project, "welcome-2.html.j2", '<p><a href="{{ site_url }}/blog/any-post">post</a> '
            '<a href="{{ site_url }}/pricing/?plan=pro#faq">plans</a> <a href="https://example.org/x">elsewhere</a> '
            '<a href="mailto:hello@example.com">write</a> <a href="{{ unsubscribe_url }}">stop</a></p>')
    assert cli.main(["funnels", "--root", str(project)]) == 0, capsys.readouterr().err


def test_a_text_part_link_to_nowhere_is_an_error(project, capsys):
    line = in_body(project, "welcome-1.txt.j2", "Our story: {{ site_url }}/about-us.")
    err = fails(project, capsys)
    assert f"infra/emails/welcome-1.txt.j2:{line}: link " in err and "/about-us is not a page" in err, err


def test_every_mistake_is_listed_at_once(project, capsys):
    first = in_body(project, "welcome-1.html.j2", "{{ coupon_code }}")
    second = in_body(project, "delivery-2.txt.j2", "{% if %}")
    third = in_body(project, "segmentation-1.html.j2", '<a href="#">top</a>')
    err = fails(project, capsys)
    for where in (f"welcome-1.html.j2:{first}: ", f"delivery-2.txt.j2:{second}: ", f"segmentation-1.html.j2:{third}: "):
        assert f"infra/emails/{where}" in err, err
    assert len([line for line in err.splitlines() if line.startswith("infra/emails/")]) == 3, err


def test_a_fixed_template_compiles_again(project, capsys):
    path = project / "infra" / "emails" / "welcome-2.html.j2"
    good = path.read_text()
    in_body(project, "welcome-2.html.j2", "{{ coupon_code }}")
    fails(project, capsys)
    path.write_text(good)
    assert cli.main(["funnels", "--root", str(project), "--check"]) == 0, capsys.readouterr()


# ---------------------------------------------------------------- at send time
@pytest.fixture
def emails_dir(tmp_path, monkeypatch) -> Path:
    """The send path's templates from a copy of infra/emails (to break one after the checks passed)."""
    shutil.copytree(ROOT / "infra" / "emails", tmp_path / "content" / "emails")
    cfg = replace(config(), content_dir=tmp_path / "content")
    monkeypatch.setattr(emails, "config", lambda: cfg)
    emails.environment.cache_clear()
    yield tmp_path / "content" / "emails"
    emails.environment.cache_clear()


def sent_copy(emails_dir: Path, funnel: str, name: str) -> Path:
    """The folder of the content version of ``name`` that the funnel's Send state names (what it renders)."""
    machine = json.loads((ROOT / "infra" / "statemachines" / f"{funnel}.asl.json").read_text())
    return emails_dir / "versions" / f"{name}@{machine['States'][f'Send {name}']['Parameters']['version']}"


def test_a_send_whose_template_breaks_fails_the_journey_naming_template_and_line(rt, tap, emails_dir, caplog):
    cid = signup(rt, "tia@example.com")
    assert sent(rt, cid) == ["welcome-1"]
    copy = sent_copy(emails_dir, "welcome", "welcome-2")
    line = in_body(copy, "welcome-2.html.j2", "<p>Your code: {{ coupon_code }}</p>")
    where = f"versions/{copy.name}/welcome-2.html.j2:{line}"
    with caplog.at_level(logging.ERROR, logger="funnelpilot.sequence"):
        assert rt.advance(2 * DAY)
    status, states = journey(rt, "welcome", cid)
    assert status == "FAILED" and states[-3:] == ["Send welcome-2", "Record failure", "Failed"]
    [ex] = executions(rt)
    described = rt.client("stepfunctions").describe_execution(executionArn=ex["executionArn"])
    assert described["error"] == "TemplateError"  # the execution fails with the step's own error and cause
    assert json.loads(described["cause"])["errorMessage"] == f"{where}: 'coupon_code' is undefined"
    [failed] = tap.events("funnel.failed")
    assert failed["detail"]["step"] == "Send welcome-2" and failed["detail"]["error"] == "TemplateError"
    [logged] = [r for r in caplog.records if r.getMessage() == "funnel step failed"]
    assert logged.cause == f"{where}: 'coupon_code' is undefined" and logged.step == "Send welcome-2"
    assert [m["template"] for m in messages(rt, cid)] == ["welcome-1"]  # no item left for welcome-2, none `sending`
    entry = rt.client("dynamodb").get_item(TableName="ContactsTable",
                                           Key={"pk": {"S": cid}, "sk": {"S": "FUNNEL#welcome"}})["Item"]
    assert entry["status"]["S"] == "failed"


def test_a_claim_left_by_an_earlier_attempt_is_marked_failed_and_a_retry_after_the_fix_sends(rt, inject, emails_dir):
    cid = signup(rt, "uma@example.com")
    path = sent_copy(emails_dir, "welcome", "welcome-2") / "welcome-2.txt.j2"
    good = path.read_text()

    def first_attempt_then_break(params) -> bool:  # SES refuses the first attempt; the template breaks before the retry
        path.write_text(good.replace("{% block body %}", "{% block body %}{{ coupon_code }}", 1))
        return True

    inject("ses", "SendRawEmail", aws_error("Throttling", "Maximum sending rate exceeded."), times=1,
           when=first_attempt_then_break)
    assert rt.advance(2 * DAY + HOUR)  # the Retry's wait runs on the simulated clock
    status, states = journey(rt, "welcome", cid)
    assert status == "FAILED" and states[-2:] == ["Record failure", "Failed"]
    m = message(rt, cid, "welcome-2")  # the first attempt's claim, released by its SES failure
    assert m["status"] == "failed" and m["reason"] == "template_error" and "lease_until" not in m
    assert f"versions/{path.parent.name}/welcome-2.txt.j2:" in m["detail"] and "'coupon_code' is undefined" in m["detail"]
    assert len(sent_emails(ACCOUNT, REGION)) == 1  # welcome-1 only
    path.write_text(good)  # fixed: the same send (a redrive) claims the failed item and sends
    [ex] = executions(rt)
    result = rt.invoke("SequenceStepFunction", {"action": "send", "funnel": "welcome", "contact_id": cid,
                                                "execution": ex["executionArn"], "state": "Send welcome-2",
                                                "template": "welcome-2"})
    assert result["status"] == "sent"
    assert message(rt, cid, "welcome-2")["status"] == "sent" and len(sent_emails(ACCOUNT, REGION)) == 2

"""Changing a live funnel (README "Changing a live funnel"): people already inside finish on the
definition and the content they started with; `funnels --plan` says what changes first; a removed
funnel drains. Every journey here is a real execution on the local runtime (stepped clock), and a
change reaches it as on AWS: `make funnels`, then a deploy (Runtime.redeploy: UpdateStateMachine)."""
import email
import json
import shutil
from email import policy
from pathlib import Path

import pytest
from conftest import START, executions, funnel_counts
from test_funnels import DAY, HOUR, journey, open_email, order, sent, signup
from test_sms import outbox as sms_outbox

from funnelpilot import clock, funnel_spec
from funnelpilot.config import config
from funnelpilot.models import PROFILE, Contact

from funnelpilot_local import cli
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT, REGION


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project a marketer edits while its stack runs."""
    for part in ("infra", "functions"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    return tmp_path


@pytest.fixture
def live(project, tmp_path):
    with Runtime(project, stepped=True, start=START, state_dir=tmp_path / "local", log_level="INFO") as runtime:
        yield runtime
        assert not runtime.denied, "template.yaml does not allow:\n" + "\n".join(map(str, runtime.denied))
        assert not runtime.errors, runtime.errors


def make_funnels(project, *args) -> int:
    return cli.main(["funnels", "--root", str(project), *args])


def bodies(to: str) -> list[str]:
    """The text part of every email sent to ``to``, oldest first."""
    found = []
    for _, raw in sent_emails(ACCOUNT, REGION):
        msg = email.message_from_string(raw, policy=policy.default)
        if msg["To"] == to:
            found.append(msg.get_body(("plain",)).get_content())
    return found


def test_renaming_a_template_and_editing_the_layout_leaves_people_inside_on_their_version(project, live, capsys,
                                                                                        monkeypatch):
    on_stack(monkeypatch, live)
    emails, funnel = project / "infra" / "emails", project / "infra" / "funnels" / "welcome.yaml"
    ann = signup(live, "ann@example.com")
    assert sent(live, ann) == ["welcome-1"]  # Ann now waits 2 days for welcome-2
    old_welcome_2 = (emails / "welcome-2.txt.j2").read_text()
    machine = json.loads((project / "infra" / "statemachines" / "welcome.asl.json").read_text())
    version = machine["States"]["Send welcome-2"]["Parameters"]["version"]  # (older versions may be kept too)
    for ext in ("html", "txt"):  # the marketer renames welcome-2 and rewrites it, and edits the layout
        (emails / f"welcome-2.{ext}.j2").rename(emails / f"why-we-started.{ext}.j2")
        path = emails / f"why-we-started.{ext}.j2"
        path.write_text(path.read_text().replace("a few years ago", "REWRITTEN: years ago"))
        layout = emails / f"layout.{ext}.j2"
        layout.write_text(layout.read_text().replace("You get this email", "NEW LAYOUT. You get this email"))
    funnel.write_text(funnel.read_text().replace("welcome-2", "why-we-started"))
    assert make_funnels(project) == 0, capsys.readouterr()
    kept = emails / "versions" / f"welcome-2@{version}"  # the version Ann's definition names
    live.redeploy()
    assert make_funnels(project, "--stack", "local") == 0 and kept.is_dir()  # Ann's execution still sends it

    bob = signup(live, "bob@example.com")  # a new entrant: the new definition, the new content
    assert live.advance(2 * DAY)
    assert sent(live, ann) == ["welcome-1", "welcome-2"] and sent(live, bob) == ["welcome-1", "why-we-started"]
    ann_2, bob_2 = bodies("ann@example.com")[1], bodies("bob@example.com")[1]
    assert "a few years ago" in ann_2 and "NEW LAYOUT" not in ann_2 and "REWRITTEN" not in ann_2
    assert "REWRITTEN: years ago" in bob_2 and "NEW LAYOUT" in bob_2
    assert "NEW LAYOUT" not in bodies("ann@example.com")[0] and "NEW LAYOUT" in bodies("bob@example.com")[0]
    assert "a few years ago" in old_welcome_2
    assert live.advance(HOUR)
    open_email(live, ann, "welcome-2")
    assert live.advance(5 * DAY + DAY)
    status, states = journey(live, "welcome", ann)
    assert status == "SUCCEEDED" and states[2] == "Send welcome-2" and states[-1] == "Go to segmentation", states
    assert "Send welcome-3" in states  # her open of the old welcome-2 counted on the old definition
    assert journey(live, "segmentation", ann)[1][:2] == ["Wait 1 day", "Send segmentation-1"]
    assert journey(live, "welcome", bob)[1][2] == "Send why-we-started"
    assert live.advance(7 * DAY) and not [e for e in executions(live) if e["status"] == "RUNNING"]
    capsys.readouterr()
    assert make_funnels(project, "--stack", "local") == 0  # no journey sends the old versions now
    assert f"removed: infra/emails/versions/{kept.name}" in capsys.readouterr().out and not kept.exists()
    assert not list((emails / "versions").glob("why-we-started@*/welcome-2*"))
    assert len(list((emails / "versions").glob("why-we-started@*"))) == 1


def on_stack(monkeypatch, rt) -> None:
    """`--stack local`: the runtime's state machines stand for the deployed stack's (CloudFormation's
    ListStackResources is what the CLI asks on AWS)."""
    from funnelpilot_local import plan

    t = rt.template
    monkeypatch.setattr(plan, "stack_machines", lambda stack, region: {
        lid: t.physical[lid] for lid in t.of_type("AWS::Serverless::StateMachine") if lid in t.physical})


def test_plan_says_what_happens_to_the_people_inside_before_anything_is_written(project, live, capsys, monkeypatch):
    on_stack(monkeypatch, live)
    ann = signup(live, "ann@example.com")
    assert sent(live, ann) == ["welcome-1"]
    emails, funnel = project / "infra" / "emails", project / "infra" / "funnels" / "welcome.yaml"
    for ext in ("html", "txt"):
        (emails / f"welcome-2.{ext}.j2").rename(emails / f"why-we-started.{ext}.j2")
    funnel.write_text(funnel.read_text().replace("welcome-2", "why-we-started").replace("wait: 3 days", "wait: 4 days")
                      .replace("  - goto: segmentation", "  - tag: welcomed\n  - goto: segmentation"))
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    assert make_funnels(project, "--plan", "--stack", "local") == 0
    out = capsys.readouterr().out
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before  # nothing written
    welcome = out[out.index("welcome: "):out.index("(nothing written")]
    assert "changes (the 1 running now keep the definition they started on" in welcome, out
    assert ("email welcome-2 is replaced by why-we-started ('Send welcome-2' -> 'Send why-we-started'): people inside "
            "who reach it still get welcome-2 as it was (0 there now)") in welcome
    assert "wait 'Wait 3 days' becomes 'Wait 4 days': people waiting there keep the old wait (0 there now)" in welcome
    assert ("'Go to segmentation' becomes 'Tag welcomed + Go to segmentation': people inside keep 'Go to "
            "segmentation' (0 there now); only new entrants meet 'Tag welcomed + Go to segmentation'") in welcome
    assert "now: 1 in 'Wait 2 days'" in welcome
    assert "segmentation: no change" in out and "delivery: no change" in out
    assert make_funnels(project, "--plan") == 0  # against the compiled files: the same changes, no counts
    local = capsys.readouterr().out
    assert "email welcome-2 is replaced by why-we-started" in local and "(anyone there now)" in local
    assert "now: " not in local


def test_a_removed_funnel_drains_then_goes_once_nobody_is_inside(project, live, capsys, monkeypatch):
    on_stack(monkeypatch, live)
    ann = signup(live, "ann@example.com")  # in welcome, waiting for welcome-2
    (project / "infra" / "funnels" / "welcome.yaml").unlink()
    assert make_funnels(project) == 0
    assert "draining: welcome (its file was removed): takes nobody in" in capsys.readouterr().out
    assert (project / "infra" / "statemachines" / "welcome.asl.json").exists()
    live.redeploy()
    assert funnel_spec.load("welcome").goals == ("order.placed",)  # its steps read the kept copy of the file
    bob = signup(live, "bob@example.com")  # contact.subscribed: welcome's trigger, refused
    assert [json_input(live, e)["contact_id"] for e in executions(live, "welcome")] == [ann]
    assert funnel_counts(live, "welcome")["refused_draining"] == 1 and sent(live, bob) == []
    report = live.http("GET", "/funnels/welcome/report", headers={"x-api-key": live.admin_key})
    assert report.status == 200 and report.json()["entered"] == 1  # a draining funnel keeps its report
    assert make_funnels(project, "--plan", "--stack", "local") == 0
    out = capsys.readouterr().out
    assert "welcome: draining (its file was removed): takes nobody in; 1 journeys inside finish" in out
    assert "now: 1 in 'Wait 2 days'" in out
    assert make_funnels(project, "--stack", "local") == 0  # somebody inside: it stays
    assert "draining: welcome (its file was removed): takes nobody in; 1 journeys inside" in capsys.readouterr().out

    assert live.advance(7 * DAY)  # Ann finishes on the old definition: welcome-2, then the hand-off
    status, states = journey(live, "welcome", ann)
    # (not opened: "Opened welcome-2?" hands her off itself)
    assert status == "SUCCEEDED" and states[-1] == "Opened welcome-2?" and "welcome-2" in sent(live, ann)
    assert journey(live, "segmentation", ann)[1][:2] == ["Wait 1 day", "Send segmentation-1"]
    assert make_funnels(project, "--stack", "local") == 0  # nobody inside now: removed
    assert "removed: infra/statemachines/welcome.asl.json" in capsys.readouterr().out
    assert "WelcomeFunnel" not in (project / "template.yaml").read_text()
    live.redeploy()
    assert not [a for a in live.state_machine_arns() if a.endswith("-welcome")]


def test_force_removes_a_draining_funnel_and_says_how_many_journeys_stop(project, live, capsys, monkeypatch):
    on_stack(monkeypatch, live)
    signup(live, "ann@example.com")
    (project / "infra" / "funnels" / "welcome.yaml").unlink()
    assert make_funnels(project, "--force", "welcome", "--plan", "--stack", "local") == 0
    assert ("welcome: removed (--force): the deploy deletes its state machine; 1 journeys still inside stop at their "
            "next transition") in capsys.readouterr().out
    assert make_funnels(project, "--force", "welcome", "--stack", "local") == 0
    out = capsys.readouterr().out
    assert "removed: welcome (--force): the next deploy deletes its state machine and stops 1 journeys" in out
    [execution] = executions(live, "welcome")
    assert execution["status"] == "RUNNING"
    live.redeploy()  # DeleteStateMachine: the journey inside stops
    assert not [a for a in live.state_machine_arns() if a.endswith("-welcome")] and not live.running_executions()
    assert cli.main(["funnels", "--root", str(project), "--force", "delivery"]) == 2  # its file is still there
    assert "infra/funnels/delivery.yaml still exists" in capsys.readouterr().err


def test_a_funnel_marked_draining_takes_nobody_in_and_no_funnel_may_hand_off_to_it(project, live, capsys):
    ann = signup(live, "ann@example.com")
    path = project / "infra" / "funnels" / "welcome.yaml"
    path.write_text(path.read_text().replace("entry: once_per_contact", "entry: once_per_contact\nstatus: draining"))
    assert make_funnels(project) == 0
    assert "draining: welcome (status: draining): takes nobody in" in capsys.readouterr().out
    live.redeploy()
    bob = signup(live, "bob@example.com")
    assert [json_input(live, e)["contact_id"] for e in executions(live, "welcome")] == [ann]
    assert funnel_counts(live, "welcome")["refused_draining"] == 1 and sent(live, bob) == []
    assert live.advance(2 * DAY) and sent(live, ann) == ["welcome-1", "welcome-2"]
    order(live, "ann@example.com")  # the goal still takes her out of a draining funnel
    assert journey(live, "welcome", ann)[0] == "ABORTED"
    other = project / "infra" / "funnels" / "reengagement.yaml"
    other.write_text(other.read_text().replace("goto: segmentation", "goto: welcome", 1))
    assert make_funnels(project) == 2
    assert "goto: funnel 'welcome' is draining (it takes nobody in)" in capsys.readouterr().err


def json_input(rt, execution: dict) -> dict:
    return json.loads(rt.client("stepfunctions").describe_execution(executionArn=execution["executionArn"])["input"])


def hot_lead(rt, cid: str, name: str, phone: str) -> str:
    """A prospect with a phone and SMS consent who viewed the pricing page three times (3 x 20 points,
    scoring.yaml): a hot lead, lead.qualified -> engagement."""
    Contact(cid, PROFILE, email=f"{name.lower()}@example.com", first_name=name, status="active", phone=phone,
            sms_consent_at=clock.iso()).save()
    key = rt.template.parameters["EventsApiKey"]
    for i in range(3):
        resp = rt.http("POST", "/events", json_body={"type": "page.viewed", "event_id": f"{cid}-pricing-{i}",
                                                      "contact_id": cid, "path": "/pricing"}, headers={"x-api-key": key})
        assert resp.status == 202
    assert rt.settle()
    return cid


def test_editing_and_renaming_a_text_leaves_people_inside_on_their_version(project, live, capsys, monkeypatch):
    on_stack(monkeypatch, live)
    texts, funnel = project / "infra" / "sms", project / "infra" / "funnels" / "engagement.yaml"
    ann = hot_lead(live, "a" * 26, "Ann", "+14155550101")
    assert live.advance(3 * DAY + HOUR)  # the offer at once (hot), then 4 days until the text
    assert journey(live, "engagement", ann)[1][-1] == "Wait 4 days" and sms_outbox(live) == []
    machine = json.loads((project / "infra" / "statemachines" / "engagement.asl.json").read_text())
    version = machine["States"]["Send SMS engagement-call"]["Parameters"]["version"]
    kept = texts / "versions" / f"engagement-call@{version}"
    assert (kept / "engagement-call.txt.j2").read_text() == (texts / "engagement-call.txt.j2").read_text()
    old = f"Hi Ann, questions before you decide? Book a 15-minute call: {config().site_url}/demo\nReply STOP to opt out"

    path = texts / "engagement-call.txt.j2"  # the marketer rewrites the text...
    path.write_text(path.read_text().replace("questions before you decide?", "REWRITTEN: still deciding?"))
    assert make_funnels(project, "--plan", "--stack", "local") == 0
    out = capsys.readouterr().out
    assert (f"text engagement-call is edited (version {version} -> ") in out, out
    assert "people inside get the old text at 'Send SMS engagement-call'; new entrants the new one" in out
    path.rename(texts / "engagement-book.txt.j2")  # ...and renames it
    funnel.write_text(funnel.read_text().replace("sms: engagement-call", "sms: engagement-book"))
    assert make_funnels(project, "--plan", "--stack", "local") == 0
    assert ("text engagement-call is replaced by engagement-book ('Send SMS engagement-call' -> 'Send SMS "
            "engagement-book'): people inside who reach it still get engagement-call as it was (0 there now)"
            ) in capsys.readouterr().out
    assert make_funnels(project) == 0, capsys.readouterr()
    live.redeploy()
    assert make_funnels(project, "--stack", "local") == 0 and kept.is_dir()  # Ann's execution still sends it

    bob = hot_lead(live, "b" * 26, "Bob", "+14155550102")  # a new entrant: the new definition, the new text
    assert live.advance(8 * DAY)
    texted = {t["DestinationPhoneNumber"]: t["MessageBody"] for t in sms_outbox(live)}
    assert texted["+14155550101"] == old  # word for word, though its file is renamed and rewritten
    assert texted["+14155550102"] == old.replace("Ann, questions before you decide?", "Bob, REWRITTEN: still deciding?")
    assert journey(live, "engagement", ann)[0] == "SUCCEEDED" and "Send SMS engagement-call" in journey(
        live, "engagement", ann)[1]
    assert "Send SMS engagement-book" in journey(live, "engagement", bob)[1]
    assert not [e for e in executions(live, "engagement") if e["status"] == "RUNNING"]
    capsys.readouterr()
    assert make_funnels(project, "--stack", "local") == 0  # no journey sends the old text now
    assert f"removed: infra/sms/versions/{kept.name}\n" in capsys.readouterr().out
    assert not kept.exists() and len(list((texts / "versions").glob("engagement-book@*"))) == 1

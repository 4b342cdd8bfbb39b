"""Changing a live funnel (README "Changing a live funnel"): people already inside finish on the
definition and the content they started with; `funnels --plan` says what changes first; a removed
funnel drains. Every journey here is a real execution on the local runtime (stepped clock), and a
change reaches it as on AWS: `make funnels`, then a deploy (Runtime.redeploy: UpdateStateMachine)."""
import email
import shutil
from email import policy
from pathlib import Path

import pytest
from conftest import START, entered_states, executions
from test_funnels import DAY, HOUR, journey, open_email, sent, signup

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


def test_renaming_a_template_and_editing_the_layout_leaves_people_inside_on_their_version(project, live, capsys):
    emails, funnel = project / "infra" / "emails", project / "infra" / "funnels" / "welcome.yaml"
    ann = signup(live, "ann@example.com")
    assert sent(live, ann) == ["welcome-1"]  # Ann now waits 2 days for welcome-2
    old_welcome_2 = (emails / "welcome-2.txt.j2").read_text()
    for ext in ("html", "txt"):  # the marketer renames welcome-2 and rewrites it, and edits the layout
        (emails / f"welcome-2.{ext}.j2").rename(emails / f"why-we-started.{ext}.j2")
        path = emails / f"why-we-started.{ext}.j2"
        path.write_text(path.read_text().replace("a few years ago", "REWRITTEN: years ago"))
        layout = emails / f"layout.{ext}.j2"
        layout.write_text(layout.read_text().replace("You get this email", "NEW LAYOUT. You get this email"))
    funnel.write_text(funnel.read_text().replace("welcome-2", "why-we-started"))
    assert make_funnels(project) == 0, capsys.readouterr()
    assert [p.name for p in (emails / "versions").glob("welcome-2@*")], "the version Ann's definition names is kept"
    live.redeploy()

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

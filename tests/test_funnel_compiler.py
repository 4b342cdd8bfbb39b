"""The funnel language and its compiler: clear errors for broken files, compiled files and
template.yaml in step with infra/funnels, and machines built from as few states as possible."""
import json
import shutil
from pathlib import Path

import pytest

from funnelpilot_local import cli, compiler
from funnelpilot.funnel_spec import FunnelError, load_all, parse
from funnelpilot_local.runtime import ROOT


def test_compiled_state_machines_and_template_are_up_to_date(capsys):
    assert cli.main(["funnels", "--check"]) == 0, capsys.readouterr()


def test_every_funnel_has_a_state_machine_in_the_template():
    template = (ROOT / "template.yaml").read_text()
    for fid in load_all(ROOT / "infra" / "funnels"):
        assert f"DefinitionUri: infra/statemachines/{fid}.asl.json" in template
        assert f"{compiler.logical_id(fid)[:-6]}Handoff:" in template


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's content and template to break."""
    shutil.copytree(ROOT / "infra", tmp_path / "infra")
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    return tmp_path


BROKEN = [
    ("steps:\n  - sned: welcome-1\n", 6, "a step has exactly one of send"),
    ("steps:\n  - send: welcome-1\n  - wait: 2 fortnights\n", 7, "is not a duration"),
    ("steps:\n  - send: no-such-email\n", 6, "email template 'no-such-email' not found"),
    ("steps:\n  - send: welcome-1\n  - goto: nowhere\n", 7, "goto: no funnel 'nowhere'"),
    ("steps:\n  - send: welcome-1\n  - if: {clickd: {email: welcome-1}}\n    then: [exit]\n", 7,
     "unknown condition 'clickd' (did you mean 'clicked'?)"),
    ("steps:\n  - send: welcome-1\n  - if: {opened: welcome-2}\n    then: [exit]\n", 7,
     "opened 'welcome-2' is not an email this funnel sends"),
    ("steps:\n  - send: welcome-1\n  - wait_for: {clicked: {email: welcome-1}}\n", 7, "wait_for needs a timeout"),
    ("steps:\n  - send: welcome-1\n    then: [exit]\n", 6, "unknown key 'then'"),
    ("steps:\n  - split: {a: {weight: 50, steps: [exit]}}\n", 6, "split takes two or more variants"),
    ("steps: [\n", 6, "not valid YAML"),
]


@pytest.mark.parametrize("steps,line,problem", BROKEN, ids=[b[2][:30] for b in BROKEN])
def test_a_broken_funnel_file_fails_make_funnels_naming_file_line_and_problem(project, capsys, steps, line,
                                                                              problem):
    path = project / "infra" / "funnels" / "broken.yaml"
    path.write_text("# a marketer's typo\nid: broken\nname: Broken\ntrigger: contact.subscribed\n" + steps)
    before = {p: p.read_text() for p in (project / "infra" / "statemachines").glob("*.json")}
    assert cli.main(["funnels", "--root", str(project)]) == 1
    err = capsys.readouterr().err
    assert f"infra/funnels/broken.yaml:{line}: " in err and problem in err, err
    assert not (project / "infra" / "statemachines" / "broken.asl.json").exists()
    assert {p: p.read_text() for p in before} == before  # nothing half-written


def test_top_level_mistakes_are_all_reported_at_once(tmp_path):
    (tmp_path / "emails").mkdir()
    path = tmp_path / "funnels" / "x.yaml"
    path.parent.mkdir()
    path.write_text("id: y\ntrigger: order.placd\nentry: once_per_ever\nquiet_hours: {start: 21h}\n"
                    "timezone: Mars/Olympus\nsteps: []\n")
    funnel, errors = parse(path)
    text = "\n".join(errors)
    assert funnel is None
    for problem in ("must match the file name", "unknown event 'order.placd' (did you mean 'order.placed'?)",
                    "entry rule 'once_per_ever'", "quiet_hours", "Mars/Olympus", "non-empty list of steps"):
        assert problem in text, text


def test_make_funnels_regenerates_what_changed_and_check_reports_it(project, capsys):
    path = project / "infra" / "funnels" / "welcome.yaml"
    path.write_text(path.read_text().replace("wait: 2 days", "wait: 36 hours"))
    assert cli.main(["funnels", "--root", str(project), "--check"]) == 1
    assert "out of date: infra/statemachines/welcome.asl.json" in capsys.readouterr().out
    assert cli.main(["funnels", "--root", str(project)]) == 0
    machine = json.loads((project / "infra" / "statemachines" / "welcome.asl.json").read_text())
    assert machine["States"]["Wait 36 hours"] == {"Type": "Wait", "Seconds": 129600, "Next": "Send welcome-2"}
    assert cli.main(["funnels", "--root", str(project), "--check"]) == 0
    (project / "infra" / "funnels" / "sunset.yaml").unlink()
    (project / "infra" / "funnels" / "reengagement.yaml").write_text(
        (project / "infra" / "funnels" / "reengagement.yaml").read_text().replace("goto: sunset", "exit"))
    assert cli.main(["funnels", "--root", str(project)]) == 0
    assert not (project / "infra" / "statemachines" / "sunset.asl.json").exists()
    assert "SunsetFunnel" not in (project / "template.yaml").read_text()


def machines() -> dict[str, dict]:
    return {p.name.removesuffix(".asl.json"): json.loads(p.read_text())
            for p in (ROOT / "infra" / "statemachines").glob("*.asl.json") if compiler.MARKER in p.read_text()}


def test_states_are_readable_and_every_task_retries_and_catches():
    for fid, machine in machines().items():
        for name, state in machine["States"].items():
            assert len(name) <= 80 and "${" not in name
            if state["Type"] == "Task":
                retried = {e for r in state["Retry"] for e in r["ErrorEquals"]}
                assert {"TransientError", "SendRateExceeded", "DailyQuotaExceeded", "Lambda.ServiceException",
                        "Lambda.TooManyRequestsException"} <= retried, (fid, name)
                assert all(r["JitterStrategy"] == "FULL" and r["MaxDelaySeconds"] for r in state["Retry"])
                assert state["Catch"][-1]["ErrorEquals"] == ["States.ALL"], (fid, name)
                assert "States.Timeout" not in retried and "States.ALL" not in retried
    welcome = machines()["welcome"]["States"]
    assert list(welcome)[:5] == ["Send welcome-1", "Wait 2 days", "Send welcome-2", "Wait 3 days",
                                 "Check: Opened welcome-2"]
    assert welcome["Opened welcome-2?"]["Type"] == "Choice"


def test_one_state_per_step_and_the_last_task_closes_the_journey():
    """send/tag/set/score/notify/goto/exit/wait/wait_for: one state each; if and split: two."""
    funnels = load_all(ROOT / "infra" / "funnels")
    from funnelpilot.funnel_spec import walk

    for fid, funnel in funnels.items():
        states = machines()[fid]["States"]
        steps = list(walk(funnel.steps))
        budget = sum(2 if s.kind in ("if", "split") or (s.kind == "wait" and isinstance(s.arg, dict)) else 1
                     for s in steps)
        budget += 2 * sum(1 for s in steps if s.kind == "send" and funnel.quiet_hours and not s.transactional)
        fixed = {"Record failure", "Failed", "Left the funnel", "Complete"}
        assert len(set(states) - fixed) == budget, fid
    sunset = machines()["sunset"]["States"]
    assert sunset["Suppress (sunset)"]["Parameters"]["complete"] is True and sunset["Suppress (sunset)"]["End"]
    assert "Complete" not in sunset


def test_funnel_errors_are_raised_together(project):
    (project / "infra" / "funnels" / "a.yaml").write_text("id: a\nsteps:\n  - goto: b\n")
    (project / "infra" / "funnels" / "c.yaml").write_text("id: c\nsteps:\n  - tag: Not A Tag\n")
    with pytest.raises(FunnelError) as err:
        load_all(project / "infra" / "funnels")
    assert "a.yaml:3: goto: no funnel 'b'" in str(err.value) and "c.yaml:3: step 1 (tag)" in str(err.value)

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
    assert cli.main(["funnels", "--root", str(project)]) == 2
    err = capsys.readouterr().err
    assert f"infra/funnels/broken.yaml:{line}: " in err and problem in err, err
    assert not (project / "infra" / "statemachines" / "broken.asl.json").exists()
    assert {p: p.read_text() for p in before} == before  # nothing half-written


def test_top_level_mistakes_are_all_reported_at_once(tmp_path):
    (tmp_path / "emails").mkdir()
    path = tmp_path / "funnels" / "x.yaml"
    path.parent.mkdir()
    path.write_text("id: y\ntrigger: order.placd\nentry: once_per_ever\nquiet_hours: {start: 21h}\n"
                    "timezone: Mars/Olympus\ngoals: [email.delivered]\nsteps: []\n")
    funnel, errors = parse(path)
    text = "\n".join(errors)
    assert funnel is None
    for problem in ("must match the file name", "unknown event 'order.placd' (did you mean 'order.placed'?)",
                    "entry rule 'once_per_ever'", "quiet_hours", "Mars/Olympus", "non-empty list of steps",
                    "'email.delivered': deliveries are counted in the reports, not published as events"):
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
    extra = project / "infra" / "funnels" / "extra.yaml"
    extra.write_text("id: extra\ntrigger: order.placed\nsteps:\n  - tag: buyer\n")
    assert cli.main(["funnels", "--root", str(project)]) == 0
    assert "ExtraFunnel" in (project / "template.yaml").read_text()
    extra.unlink()  # a removed funnel drains (tests/test_live_edits.py) until forced
    assert cli.main(["funnels", "--root", str(project)]) == 0
    assert "draining: extra (its file was removed)" in capsys.readouterr().out
    assert '"draining": true' in (project / "template.yaml").read_text()
    assert cli.main(["funnels", "--root", str(project), "--force", "extra"]) == 0
    assert "removed: infra/statemachines/extra.asl.json" in capsys.readouterr().out
    assert not (project / "infra" / "statemachines" / "extra.asl.json").exists()
    assert not (project / "infra" / "statemachines" / "extra.yaml").exists()
    assert "ExtraFunnel" not in (project / "template.yaml").read_text()


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
    assert list(welcome)[:5] == ["Send welcome-1", "Wait 2 days", "Send welcome-2", "Wait 3 days", "Opened welcome-2?"]
    assert welcome["Opened welcome-2?"]["Parameters"]["action"] == "if"
    assert not any(s["Type"] == "Choice" for fid, m in machines().items() if fid != "engagement" for s in m["States"].values())


def test_one_state_per_step_and_the_last_task_closes_the_journey():
    """send/wait/wait_for/if: one state each, a send and the wait_for after it one together; split: two;
    a run of tag/set/score/notify/suppress (ended by a goto or exit): one, none where an if's answer
    runs it (folded)."""
    funnels = load_all(ROOT / "infra" / "funnels")
    from funnelpilot.funnel_spec import walk

    for fid, funnel in funnels.items():
        states = machines()[fid]["States"]
        steps = list(walk(funnel.steps))
        budget = sum(2 if s.kind == "split" else 1 for s in steps)
        budget -= sum(len(run) - 1 for seq in _sequences(funnel.steps) for run in compiler._runs(seq))
        budget -= len({fold["label"] for s in states.values() if s.get("Parameters", {}).get("action") == "if"
                       for fold in (s["Parameters"].get("yes"), s["Parameters"].get("no"))
                       if fold and fold["steps"] and fold["label"] not in states})
        budget -= sum(1 for s in states.values() if compiler.payload(s).get("wait_for"))  # fused: _Machine._fuse
        # the quiet-hours detour of a marketing send (2 states, off the common path); a funnel
        # starting with one waits first (a Wait the router computes)
        marketing = [s for s in steps if s.kind in ("send", "sms") and funnel.quiet_hours and not s.transactional]
        budget += 2 * len(marketing) + (funnel.steps[0] in marketing)
        # the frequency cap's detour of a marketing email (2 states, off the common path too)
        budget += 2 * sum(1 for s in steps if s.kind == "send" and not s.transactional)
        budget += sum(1 for s in states.values() if s.get("Parameters", {}).get("wait", {}).get("until")
                      and s["Parameters"]["action"] == "until")  # a `wait: {until}` no Task precedes
        fixed = {"Record failure", "Failed", "Left the funnel", "Complete"}
        assert len(set(states) - fixed) == budget, fid
    sunset = machines()["reengagement"]["States"]["Sunset"]
    assert sunset["Parameters"]["action"] == "sunset" and "reason" not in sunset["Parameters"]
    assert sunset["Parameters"]["complete"] is True and sunset["End"]
    assert "Complete" not in machines()["reengagement"]["States"]


def _sequences(steps):
    """Every list of steps of a funnel (its own, then, else, each variant's)."""
    yield steps
    for step in steps:
        for inner in (step.then, step.otherwise, *(b for _, _, b in step.branches)):
            if inner:
                yield from _sequences(inner)


def test_funnel_errors_are_raised_together(project):
    (project / "infra" / "funnels" / "a.yaml").write_text("id: a\nsteps:\n  - goto: b\n")
    (project / "infra" / "funnels" / "c.yaml").write_text("id: c\nsteps:\n  - tag: Not A Tag\n")
    with pytest.raises(FunnelError) as err:
        load_all(project / "infra" / "funnels")
    assert "a.yaml:3: goto: no funnel 'b'" in str(err.value) and "c.yaml:3: step 1 (tag)" in str(err.value)


def _compiled(project: Path, text: str) -> dict:
    path = project / "infra" / "funnels" / "t.yaml"
    path.write_text("id: t\ntrigger: order.placed\n" + text)
    funnel, errors = parse(path)
    assert not errors, errors
    return compiler.compile_funnel(funnel)


QUIET = 'quiet_hours: {start: "21:00", end: "08:00"}\n'


def test_a_wait_before_a_marketing_send_is_computed_by_the_task_before_it(project):
    machine = _compiled(project, QUIET + "steps:\n  - send: welcome-1\n  - wait: 2 days\n  - tag: x\n"
                                         "  - send: welcome-2\n  - wait: 1 day\n  - tag: y\n")
    states = machine["States"]
    # the router computes the first Wait (the trigger may come at night), the send the next one
    assert machine["StartAt"] == "Wait until welcome-1 may go"
    assert states["Wait until welcome-1 may go"]["SecondsPath"] == "$.wait_seconds"
    assert states["Send welcome-1"]["Parameters"]["wait"] == {"seconds": 172800, "quiet": True}
    assert states["Wait 2 days"]["SecondsPath"] == "$.last.wait_seconds" and "Seconds" not in states["Wait 2 days"]
    # no send after it: a plain Wait, no parameter
    assert states["Wait 1 day"] == {"Type": "Wait", "Seconds": 86400, "Next": "Tag y"}
    assert "wait" not in states["Send welcome-2"]["Parameters"]
    [path] = compiler.paths(machine)
    assert path["states"] == ["Wait until welcome-1 may go", "Send welcome-1", "Wait 2 days", "Tag x",
                              "Send welcome-2", "Wait 1 day", "Tag y"]
    assert path["transitions"] == 7 and path["emails"] == 2 and path["deferred"] == 7  # deferral costs nothing
    assert 'start_wait": {"quiet": true}' in compiler.template_block({"t": parse(project / "infra" / "funnels" /
                                                                                   "t.yaml")[0]})


def test_an_if_folds_only_the_steps_a_retry_cannot_answer_differently(project):
    machine = _compiled(project, "steps:\n  - send: welcome-1\n  - wait: 1 day\n"
                                 "  - if: {score: {gte: 10}}\n    then: [{tag: hot}]\n"
                                 "  - if: {clicked: {email: welcome-1}}\n    then: [{tag: clicker}]\n"
                                 "  - send: welcome-2\n  - if: {tag: vip}\n    then: [{goto: segmentation}]\n")
    states = machine["States"]
    score, click, vip = states["Score ≥ 10?"], states["Clicked welcome-1?"], states["Tagged vip?"]
    # a score may differ on a retry: nothing folded, its yes goes on to the tag's own Task, its no by a Catch
    assert "yes" not in score["Parameters"] and score["Parameters"]["raise"] == "no"
    assert score["Catch"][0] == {"ErrorEquals": ["No"], "ResultPath": "$.last", "Next": "Clicked welcome-1?"}
    assert score["Next"] == "Tag hot" and states["Tag hot"]["Next"] == "Clicked welcome-1?"
    # a click stays made: its yes tags in the same Task, both answers go on to the next state
    assert click["Parameters"]["yes"] == {"label": "Tag clicker", "steps": [{"action": "tag", "tag": "clicker"}]}
    assert "raise" not in click["Parameters"] and click["Next"] == "Send welcome-2" and "Tag clicker" not in states
    # ending the journey either way: the hand-off (and the close) in the Task, which ends there
    assert vip["Parameters"]["yes"]["close"] == {"outcome": "completed"} and vip["Parameters"]["no"]["steps"] == []
    assert vip["End"] is True and "Go to segmentation" not in states and "Complete" not in states
    # paths: the score's two answers, each ending at the vip question's two (the click's answers are one way)
    assert [p["end"] for p in compiler.paths(machine)] == ["Go to segmentation", "Complete"] * 2


def test_a_wait_after_a_wait_for_stays_plain_and_its_send_keeps_the_detour(project):
    machine = _compiled(project, QUIET + "steps:\n  - wait: 1 day\n  - send: welcome-1\n"
                                         "  - wait_for: {clicked: {email: welcome-1}}\n    timeout: 2 days\n"
                                         "  - wait: 1 day\n  - send: welcome-2\n")
    states = machine["States"]
    assert states["Wait 1 day"]["SecondsPath"] == "$.wait_seconds"
    assert states["Wait 1 day (2)"] == {"Type": "Wait", "Seconds": 86400, "Next": "Send welcome-2"}
    assert states["Send welcome-2"]["Catch"][0] == {"ErrorEquals": ["QuietHours"], "ResultPath": "$.last",
                                                    "Next": "Quiet hours: time until welcome-2 may go"}
    # clicked or not (one path: both ends go on to the same state), welcome-2 may take the detour
    # (the first Wait, welcome-1 and its wait for a click as one Task, the second Wait, welcome-2)
    assert [(p["transitions"], p["deferred"]) for p in compiler.paths(machine)] == [(4, 7)]
    assert states["Send welcome-1"]["Parameters"]["Payload"]["wait_for"]["timeout_seconds"] == 2 * 86400


def test_wait_until_uses_the_task_before_it_else_its_own(project):
    machine = _compiled(project, "steps:\n  - send: welcome-1\n  - wait: {until: \"09:00\"}\n  - send: welcome-2\n"
                                 "  - if: {tag: x}\n    then: [{tag: y}]\n  - wait: {until: \"10:00\"}\n  - tag: z\n")
    states = machine["States"]
    assert "Time until 09:00" not in states
    assert states["Send welcome-1"]["Parameters"]["wait"] == {"until": "09:00"}
    assert states["Send welcome-1"]["Next"] == "Wait until 09:00"
    # after a Choice: the Wait keeps its Task
    assert states["Time until 10:00"]["Parameters"]["wait"] == {"until": "10:00"}
    assert states["Wait until 10:00"]["SecondsPath"] == "$.last.wait_seconds"


def test_make_funnels_prints_transitions_per_path(capsys):
    assert cli.main(["funnels", "--check"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:6]) for line in out.splitlines() if line.startswith("  reengagement")}
    # silence: start Wait, reengage-1 and its wait for a click (one Task), reengage-2 and its wait, Sunset;
    # reengage-2 comes after a wait_for: deferred, it takes the 3-state detour
    assert ("reengagement", "2", "2", "4", "2.00", "7") in rows
    # not opened: welcome-1, Wait, welcome-2, Wait, "Opened welcome-2?" (which hands off and closes the journey)
    assert any(line.split()[:6] == ["welcome", "1", "2", "5", "2.50", "5"] for line in out.splitlines())
    assert any(line.split()[:6] == ["welcome", "1", "3", "8", "2.67", "8"] for line in out.splitlines())
    # a topic clicked: the three topic questions run their tag and set, the last one hands off
    assert any(line.split()[:5] == ["segmentation", "2", "1", "6", "6.00"] and "Go to ascension, Go to engagement" in line
               for line in out.splitlines())

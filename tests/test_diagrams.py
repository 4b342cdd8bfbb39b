"""`make funnels` draws every funnel as a Mermaid flowchart (infra/diagrams/<id>.md) from its
compiled state machine: its sends with their subjects, waits, branches, hand-offs and ends."""
import re
import shutil
from pathlib import Path

import pytest

from funnelpilot_local import cli
from funnelpilot_local.runtime import ROOT

NODE = re.compile(r'^  (\w+)[\[({>]+"(.*?)"[\])}]+$')
EDGE = re.compile(r'^  (\w+) (?:-- "(.*?)" )?--> (\w+)$')


def chart(path: Path) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """(node id -> label, {(from label, edge label, to label)}) of the diagram's mermaid block; the
    first line of a label only (a send's second line is its subject)."""
    text = path.read_text()
    block = text.split("```mermaid\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert block[0] == "flowchart TD"
    nodes = {m.group(1): m.group(2) for line in block if (m := NODE.match(line))}
    edges = {(m.group(1), m.group(2) or "", m.group(3)) for line in block if (m := EDGE.match(line))}
    assert len(nodes) + len(edges) == len(block) - 1, "every line is a node or an edge"
    first = {k: v.split("<br/>")[0] for k, v in nodes.items()}
    return nodes, {(first[a], label, first[b]) for a, label, b in edges}


def test_the_welcome_diagram_has_its_sends_waits_branch_and_hand_off():
    nodes, edges = chart(ROOT / "infra" / "diagrams" / "welcome.md")
    assert edges == {
        ("Entered on contact.subscribed or a hand-off", "", "Send welcome-1"),
        ("Send welcome-1", "", "Wait 2 days"), ("Wait 2 days", "", "Send welcome-2"),
        ("Send welcome-2", "", "Wait 3 days"), ("Wait 3 days", "", "Opened welcome-2?"),
        ("Opened welcome-2?", "yes", "Send welcome-3"), ("Opened welcome-2?", "no", "Go to segmentation"),
        ("Send welcome-3", "", "Wait 2 days (2)"), ("Wait 2 days (2)", "", "Go to segmentation"),
        ("Go to segmentation", "", "Complete")}
    assert "Send welcome-1<br/>“Welcome, Ada!”" in nodes.values()  # the subject a sample contact gets
    assert "Goal: order.placed<br/>leaves at once, converted" in nodes.values()
    assert "Hands contacts off to: [segmentation](segmentation.md)." in (ROOT / "infra/diagrams/welcome.md").read_text()


def test_waits_for_a_click_split_and_exit_are_drawn_with_their_conditions():
    _, delivery = chart(ROOT / "infra" / "diagrams" / "delivery.md")
    # a send and the wait_for after it are one Task: the send's node says what it waits for
    assert {("Entered on contact.subscribed (lead_magnet) or a hand-off", "", "Send delivery-1"),
            ("Send delivery-1", "clicked", "Tag downloaded"), ("Send delivery-1", "timeout", "Send delivery-2")} <= delivery
    assert "Then: Wait for a click on delivery-1 (/download/), up to 2 days." in (
        ROOT / "infra/diagrams/delivery.md").read_text()
    nodes, engagement = chart(ROOT / "infra" / "diagrams" / "engagement.md")
    assert {("Which variant?", "a: 50%", "Send engagement-2a"), ("Which variant?", "b: 50%", "Send engagement-2b"),
            ("Clicked /pricing in engagement-1?", "yes", "Score +10 + Notify sales: clicked the pricing link in "
                                                         "engagement-1")} <= engagement
    assert "Exit: contact.unsubscribed<br/>leaves at once" in nodes.values()
    assert not any("Record failure" in label or "Quiet hours" in label for label in nodes.values())
    _, segmentation = chart(ROOT / "infra" / "diagrams" / "segmentation.md")
    assert ("Send segmentation-1", "timeout", "Exit (no topic chosen)") in segmentation
    assert {("Customer is True?", "yes", "Go to ascension"), ("Customer is True?", "no", "Go to engagement")} <= segmentation
    assert "Hands contacts off to: [ascension](ascension.md), [engagement](engagement.md)." in (
        ROOT / "infra/diagrams/segmentation.md").read_text()  # from the steps the question runs


def test_every_funnel_has_a_diagram_linked_from_the_index_and_the_readme():
    funnels = sorted(p.stem for p in (ROOT / "infra" / "funnels").glob("*.yaml"))
    assert sorted(p.stem for p in (ROOT / "infra" / "diagrams").glob("*.md") if p.stem != "README") == funnels
    index = (ROOT / "infra" / "diagrams" / "README.md").read_text()
    assert all(f"]({fid}.md)" in index for fid in funnels)
    assert "infra/diagrams/README.md" in (ROOT / "README.md").read_text()


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copytree(ROOT / "infra", tmp_path / "infra")
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    return tmp_path


def test_a_changed_funnel_changes_its_diagram_and_a_removed_one_loses_it(project, capsys):
    path = project / "infra" / "funnels" / "welcome.yaml"
    path.write_text(path.read_text().replace("  - wait: 2 days\n", "  - wait: 36 hours\n", 1)
                    .replace("  - goto: segmentation", "  - tag: welcomed\n  - goto: segmentation"))
    assert cli.main(["funnels", "--root", str(project), "--check"]) == 1
    assert "out of date: infra/diagrams/welcome.md" in capsys.readouterr().out
    assert cli.main(["funnels", "--root", str(project)]) == 0
    _, edges = chart(project / "infra" / "diagrams" / "welcome.md")
    assert {("Send welcome-1", "", "Wait 36 hours"), ("Wait 36 hours", "", "Send welcome-2"),
            ("Opened welcome-2?", "no", "Tag welcomed + Go to segmentation")} <= edges
    assert ("Send welcome-1", "", "Wait 2 days") not in edges
    extra = project / "infra" / "funnels" / "extra.yaml"
    extra.write_text("id: extra\nname: Extra\ntrigger: order.placed\nsteps:\n  - tag: buyer\n")
    assert cli.main(["funnels", "--root", str(project)]) == 0
    assert chart(project / "infra" / "diagrams" / "extra.md")[1] == {
        ("Entered on order.placed or a hand-off", "", "Tag buyer"), ("Tag buyer", "", "Complete")}
    extra.unlink()
    assert cli.main(["funnels", "--root", str(project)]) == 0
    assert not (project / "infra" / "diagrams" / "extra.md").exists()
    assert "extra.md" not in (project / "infra" / "diagrams" / "README.md").read_text()

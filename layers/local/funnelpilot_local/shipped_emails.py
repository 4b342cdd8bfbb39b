"""Every shipped email as SES gets it (the raw ``.eml``), sent through the real path on a local
runtime: a person signs up (double opt-in: the confirmation email), then each funnel's send Task
runs for its template, as a state machine's Task invokes functions/sequence_step, marked
``transactional`` (as the delivery funnel's sends are) so that it goes to the pending person at
once: the rendering, tracking and headers are those of every send; only the checks before a send
(confirmed, frequency cap, quiet hours) are skipped. For bench/spam_scores.py and the email tests
(tests/test_email_design.py, tests/test_browser_emails.py)."""
import json
from email import message_from_bytes
from pathlib import Path

from funnelpilot import tokens

PER_SECOND = 10  # under SES's sending rate (the strict runtime's 14 a second): the clock moves a second after each 10


def send_tasks(root: Path) -> dict[str, tuple[str, dict]]:
    """template -> (state name, Parameters) of the first compiled send Task for it (by file name,
    infra/statemachines): what the state machine passes to functions/sequence_step, content version included."""
    found: dict[str, tuple[str, dict]] = {}

    def visit(node) -> None:
        if isinstance(node, dict):
            for name, state in (node.get("States") or {}).items():
                params = state.get("Parameters") if isinstance(state, dict) else None
                params = params.get("Payload", params) if isinstance(params, dict) else None  # a send with its wait_for
                if isinstance(params, dict) and params.get("action") == "send":
                    found.setdefault(params["template"], (name, {k: v for k, v in params.items() if k != "wait_for"}))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for path in sorted((root / "infra" / "statemachines").glob("*.asl.json")):
        visit(json.loads(path.read_text()))
    return found


def _sent(rt) -> dict[str, bytes]:
    """message id -> raw message of every email in the runtime's outbox."""
    rt.flush_outbox()
    return {p.stem: p.read_bytes() for p in rt.outbox.glob("*.eml")}


def send_all(rt, first_name: str | None = "Ann") -> dict[str, bytes]:
    """template -> the raw message sent for it: ``confirm`` and every template a funnel sends, each
    to a person of its own (``first_name``; None: someone who gave no name)."""
    sends = send_tasks(rt.root)
    people = {template: f"sample.{template}@example.com" for template in sends}
    for i, email in enumerate(people.values()):
        form = {"email": email, "consent": True, "list": "newsletter", **({"first_name": first_name} if first_name else {})}
        # one source address per person: the signup limit per IP is not what this is about
        assert rt.http("POST", "/signup", json_body=form, source_ip=f"10.9.{i // 250}.{i % 250 + 1}").status == 202
        if i % PER_SECOND == PER_SECOND - 1:
            rt.advance(1)
    assert rt.settle()
    confirmation = next(iter(_sent(rt).values()))
    ids = {}
    for i, (template, (state, params)) in enumerate(sends.items()):
        if i % PER_SECOND == 0:
            rt.advance(1)
        execution = f"arn:aws:states:us-east-1:123456789012:execution:funnelpilot-{params['funnel']}:sample-{template}"
        step = {**{k: v for k, v in params.items() if not k.endswith(".$")}, "contact_id": tokens.contact_id(people[template]),
                "execution": execution, "state": state,
                "transactional": True}  # to a pending person, at once: the checks before a send are not what this is about
        result = rt.invoke("SequenceStepFunction", step)
        assert result.get("status") == "sent", (template, result)
        ids[template] = result["message_id"]
    sent = _sent(rt)
    return {"confirm": confirmation, **{t: sent[m] for t, m in ids.items()}}


def send_broadcasts(rt, readers: int = 40) -> dict[str, bytes]:
    """email name (``broadcast-<id>-<variant>``) -> the raw message of every shipped broadcast
    (infra/broadcasts/*.yaml), each variant as a reader got it: created and sent now through the admin
    routes as `funnelpilot broadcast` sends it, to ``readers`` people imported to its list (an A/B
    test's winner after its wait)."""
    from funnelpilot.audience import importer
    from funnelpilot_local.broadcast_cli import Source

    admin, out = {"x-api-key": rt.admin_key}, {}
    for path in sorted((rt.root / "infra" / "broadcasts").glob("*.yaml")):
        spec = Source(path).inlined()
        rows = [{"email": f"reader{i}.{spec['name']}@example.com", "first_name": "Ann"} for i in range(readers)]
        importer.apply(rows, {"file": "readers.csv", "imported_at": "2026-03-01", "list": spec["list"], "mapping": {}})
        assert rt.http("POST", "/broadcasts", json_body=spec, headers=admin).status == 201, path
        assert rt.http("POST", f"/broadcasts/{spec['name']}/schedule", json_body={"now": True}, headers=admin).status == 200
        rt.advance(((spec.get("ab") or {}).get("wait_hours", 0) + 1) * 3600)
        assert rt.settle()
        for raw in _sent(rt).values():
            tags = message_from_bytes(raw).get("X-SES-MESSAGE-TAGS") or ""
            email = next((t.split("=", 1)[1] for t in tags.split(", ") if t.startswith("email=")), "")
            if f"broadcast={spec['name']}" in tags:
                out.setdefault(email, raw)
    return out

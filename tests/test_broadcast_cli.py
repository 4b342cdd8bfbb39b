"""Broadcast surfaces (issue 14, item 1): the admin routes' validation and status codes, `funnelpilot
broadcast` end to end against a runtime (and against `make serve` over HTTP), FILE:LINE errors for a
broadcast file, and the shipped example."""
import argparse
import contextlib
import io
import json
import re
import shutil
import time
from email import message_from_bytes, policy

from conftest import SINGLE
from test_browser import free_port
from test_funnels import signup
from test_lookup import RuntimeApi

from funnelpilot.audience import importer
from funnelpilot_local import broadcast_cli, cli
from funnelpilot_local.runtime import ROOT

ADMIN = {"x-api-key": "local-admin-key"}
EXAMPLE = ROOT / "infra" / "broadcasts" / "december-news.yaml"
HTML = (ROOT / "infra" / "broadcasts" / "december-news.html.j2").read_text()
TEXT = (ROOT / "infra" / "broadcasts" / "december-news.txt.j2").read_text()


def spec(**changes) -> dict:
    """A valid spec to the tests' single opt-in list, with ``changes``."""
    return {"name": "spring", "subject": "Three habits of lists that grow", "preheader": "Three short reads.",
            "content": {"html": HTML, "text": TEXT}, "list": SINGLE, "audience": {"lists": [SINGLE]},
            "frequency_cap": "ignore", **changes}


def post(rt, path: str, body: dict | None = None):
    return rt.http("POST", path, json_body=body if body is not None else {}, headers=ADMIN)


def run(rt, *argv) -> tuple[int, str, str]:
    """`funnelpilot broadcast ARGV` against the test's runtime: (exit code, stdout, stderr), as cli.main
    would print them."""
    parser = argparse.ArgumentParser()
    broadcast_cli.register(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = broadcast_cli.run(parser.parse_args(["broadcast", *argv]), api=RuntimeApi(rt), out=out)
        except cli.UserError as exc:
            print(f"error: {exc}", file=err)
            code = 2
    return code, out.getvalue(), err.getvalue()


def inbox(rt) -> list:
    rt.flush_outbox()
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]


def test_routes_validate_the_spec_and_answer_404_and_409(rt):
    assert rt.http("POST", "/broadcasts", json_body=spec()).status == 403  # not signed (locally: no admin key)
    refusals = {
        "audience.segments": spec(audience={"segments": ["no-such-segment"]}),
        "list": spec(list="no-such-list"),
        "subject": spec(subject=""),
        "frequency_cap": spec(frequency_cap="sometimes"),
        "content": spec(content={"html": HTML.replace("{% endblock %}", "", 1), "text": TEXT}),
    }
    for field, body in refusals.items():
        resp = post(rt, "/broadcasts", body)
        assert resp.status == 400 and resp.json()["field"] == field, (field, resp.body)
    undefined = post(rt, "/broadcasts", spec(content={"html": HTML.replace("{{ first_name }}", "{{ frist_name }}"),
                                                      "text": TEXT})).json()
    assert undefined["field"] == "content" and re.search(r"content\.html line 4\b.*frist_name", undefined["error"])
    assert rt.http("GET", "/broadcasts", headers=ADMIN).json() == {"broadcasts": []}  # nothing was stored

    made = post(rt, "/broadcasts", spec())
    assert made.status == 201 and made.json()["id"] == "spring" and made.json()["status"] == "draft"
    assert post(rt, "/broadcasts", spec()).status in (400, 409)  # the name is taken
    for method, path in (("GET", "/broadcasts/nope"), ("PUT", "/broadcasts/nope"), ("GET", "/broadcasts/nope/report"),
                         ("POST", "/broadcasts/nope/schedule"), ("POST", "/broadcasts/nope/cancel")):
        resp = rt.http(method, path, json_body=spec(name="nope") if method == "PUT" else {}, headers=ADMIN)
        assert resp.status == 404 and resp.json()["field"] == "id", (method, path)

    when = {"local": "09:00", "date": "2026-03-03", "fallback_zone": "Mars/Olympus_Mons"}
    assert post(rt, "/broadcasts/spring/schedule", when).json()["field"] == "fallback_zone"
    past = post(rt, "/broadcasts/spring/schedule", {"at": "2026-03-01T09:00:00Z"})
    assert past.status == 400 and past.json()["field"] == "at"
    assert post(rt, "/broadcasts/spring/pause").status == 409  # a draft is not sending

    people = [signup(rt, f"reader{i}@example.com") for i in range(3)]
    assert post(rt, "/broadcasts/spring/schedule", {"now": True}).status == 200
    rt.advance(60)
    assert rt.settle()
    report = rt.http("GET", "/broadcasts/spring/report", headers=ADMIN).json()
    assert report["audience"] == len(people) and report["sent"] == len(people)
    got = [m for m in inbox(rt) if m["Subject"] == "Three habits of lists that grow"]
    assert sorted(m["To"] for m in got) == [f"reader{i}@example.com" for i in range(3)]
    assert rt.http("GET", "/broadcasts/spring", headers=ADMIN).json()["status"] == "sent"
    cancel = post(rt, "/broadcasts/spring/cancel")
    assert cancel.status == 409 and cancel.json()["field"] == "status"
    assert rt.http("PUT", "/broadcasts/spring", json_body=spec(subject="Changed"), headers=ADMIN).status == 409


def test_cli_create_preview_test_schedule_report_of_the_example(rt, tmp_path):
    """The shipped example as a marketer sends it: to two imported newsletter readers, A/B subjects on the
    sample, the winner to the rest after wait_hours."""
    importer.apply([{"email": f"rosa{i}@example.com", "first_name": "Rosa"} for i in range(2)],  # `contacts import`
                   {"file": "seed.csv", "imported_at": "2026-03-01", "list": "newsletter", "mapping": {}})
    source = broadcast_cli.Source(EXAMPLE)
    assert source.link_problems(source.inlined()) == []  # the template checks of `make funnels` pass
    code, out, _ = run(rt, "create", str(EXAMPLE))
    assert code == 0 and "created broadcast december-news (draft)" in out
    code, out, _ = run(rt, "list")
    assert re.search(r"december-news\s+draft\s+-", out), out

    page = tmp_path / "news.html"
    code, out, _ = run(rt, "preview", "december-news", "--email", "rosa0@example.com", "--out", str(page))
    assert code == 0 and "audience:  2" in out and "preheader: What worked for small teams" in out
    assert "Hi Rosa," in page.read_text() and "/blog/three-habits" in page.read_text()
    assert "Hi Rosa," in page.with_suffix(".txt").read_text()

    code, out, _ = run(rt, "test", "december-news", "--to", "me@example.com")
    subjects = ["[Test] Three habits of lists that grow", "[Test] The bakery that emails less and sells more"]
    assert code == 0 and all(s in out for s in subjects)
    tests = [m for m in inbox(rt) if m["To"] == "me@example.com"]
    assert sorted(m["Subject"] for m in tests) == sorted(subjects)  # one per A/B variant
    assert not [m for m in tests if "/o/" in m.get_body(("html",)).get_content()]  # untracked: no open pixel

    code, out, _ = run(rt, "schedule", "december-news", "--now")
    assert code == 0 and "december-news: scheduled now" in out
    rt.advance(5 * 3600)  # the A/B sample, then the winner after wait_hours (4)
    assert rt.settle()
    news = [m for m in inbox(rt) if m["To"] != "me@example.com" and "List-Id" in m and "broadcast" in
            (m["X-SES-MESSAGE-TAGS"] or "")]
    assert sorted(m["To"] for m in news) == ["rosa0@example.com", "rosa1@example.com"]
    code, out, _ = run(rt, "report", "december-news")
    assert code == 0
    assert re.search(r"^\s+sent\s+2\b", out, re.M) and re.search(r"^\s+audience\s+2\b", out, re.M), out
    assert "variant a" in out and "variant b" in out


def test_file_line_errors_and_nothing_is_created(rt, tmp_path):
    good = (f"name: news\nsubject: Three short reads\npreheader: Three short reads.\nlist: {SINGLE}\n"
            f"audience:\n  lists: [{SINGLE}]\n  segments:\n    - hot-leads\n    - no-such-segment\n")
    known = good.replace("    - no-such-segment\n", "")
    cases = [
        (good.replace("subject: Three", "subject: Three:"), HTML, r"^\S+news\.yaml:2: mapping values are not allowed"),
        (good, HTML, r"^\S+news\.yaml:9: audience\.segments: unknown segment 'no-such-segment'"),
        (known + "colour: teal\n", HTML, r"^\S+news\.yaml:9: colour: unknown field 'colour'"),
        (known, HTML.replace("{{ first_name }}", "{{ nme }}"), r"^\S+news\.html\.j2:4: 'nme' is undefined"),
        (known, HTML.replace("{% endblock %}", "", 1), r"^\S+news\.html\.j2:\d+: "),
        (known, HTML.replace("/case-study", "/case-studies"),  # the template checks of `make funnels`
         r"^\S+news\.html\.j2:13: link https://example.com/case-studies: /case-studies is not a page of the site"),
        (known + "content: {html: other.html.j2}\n", HTML, r"^\S+news\.yaml:9: content\.html: no such file"),
    ]
    for yaml_text, html, expected in cases:
        (tmp_path / "news.html.j2").write_text(html)
        (tmp_path / "news.txt.j2").write_text(TEXT)
        (tmp_path / "news.yaml").write_text(yaml_text)
        code, out, err = run(rt, "create", str(tmp_path / "news.yaml"))
        assert code == 2 and re.search(expected, err), (expected, err)
    assert rt.http("GET", "/broadcasts", headers=ADMIN).json() == {"broadcasts": []}
    code, _, err = run(rt, "report", "news")
    assert code == 2 and "no broadcast named 'news'" in err
    code, _, err = run(rt, "schedule", "news", "--local", "09:00")
    assert code == 2 and "--local needs --date" in err


def test_make_serve_runs_broadcasts_now_and_at_a_local_time(tmp_path):
    """Against `funnelpilot serve` over HTTP, through cli.main as a user types it: one broadcast --now,
    one at 09:00 tomorrow in the fallback zone; the served clock (two simulated hours a second) sends both."""
    from datetime import datetime, timedelta
    from email.utils import parsedate_to_datetime
    from zoneinfo import ZoneInfo

    from funnelpilot import clock
    from funnelpilot_local.server import LocalServer

    folder = tmp_path / "broadcasts"
    folder.mkdir()
    for name in ("now", "later"):
        for suffix in (".html.j2", ".txt.j2"):
            shutil.copy(EXAMPLE.with_name(f"december-news{suffix}"), folder / f"{name}{suffix}")
        (folder / f"{name}.yaml").write_text(f"name: {name}\nsubject: News {name}\npreheader: Three short reads.\n"
                                             f"list: {SINGLE}\naudience: {{lists: [{SINGLE}]}}\nfrequency_cap: ignore\n")
    with LocalServer(free_port(), speed=7200.0, state_dir=tmp_path / "local") as server:
        server.start()
        url = ["--url", server.base]
        with server._lock:
            assert server.rt.http("POST", "/signup", json_body={"email": "ann@example.com", "consent": True,
                                                                "list": SINGLE}, source_ip="10.1.2.3").status == 202
        for name in ("now", "later"):
            assert cli.main(["broadcast", "create", str(folder / f"{name}.yaml"), *url]) == 0
        assert cli.main(["broadcast", "schedule", "now", "--now", *url]) == 0
        berlin = ZoneInfo("Europe/Berlin")
        tomorrow = (datetime.fromtimestamp(clock.now(), berlin) + timedelta(days=1)).date()
        assert cli.main(["broadcast", "schedule", "later", "--local", "09:00", "--date", tomorrow.isoformat(),
                         "--fallback-zone", "Europe/Berlin", *url]) == 0
        deadline, got = time.monotonic() + 120, {}
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            with server._lock:
                got = {m["Subject"]: m for m in inbox(server.rt) if m["Subject"] in ("News now", "News later")}
        assert set(got) == {"News now", "News later"}
        sent_at = parsedate_to_datetime(got["News later"]["Date"]).astimezone(berlin)
        assert (sent_at.date(), sent_at.hour) == (tomorrow, 9)


def test_without_public_url_a_preview_links_to_the_api_the_request_came_to(rt, monkeypatch):
    """On AWS with PublicUrl empty the function cannot name its own API (template.yaml: a cycle): the
    unsubscribe link of a preview is on the domain API Gateway says the request came to."""
    from funnelpilot.config import config
    from funnelpilot_local.runtime import http_api_event

    assert post(rt, "/broadcasts", spec()).status == 201
    route = next(r for r in rt.routes if (r.method, r.path) == ("POST", "/broadcasts/{id}/preview"))
    event = http_api_event("POST", "/broadcasts/spring/preview", "", {"content-type": "application/json"}, "{}",
                           {"id": "spring"}, route, "203.0.113.9")
    event["requestContext"]["domainName"] = "abc123.execute-api.eu-west-1.amazonaws.com"
    event["requestContext"]["authorizer"] = {"iam": {"userArn": "arn:aws:iam::123456789012:user/marketer"}}
    monkeypatch.setenv("PUBLIC_URL", "")
    config.cache_clear()
    try:
        result = rt.invoke("BroadcastsAdminFunction", event)
    finally:
        monkeypatch.undo()
        config.cache_clear()
    assert result["statusCode"] == 200
    assert "https://abc123.execute-api.eu-west-1.amazonaws.com/u/" in json.loads(result["body"])["text"]

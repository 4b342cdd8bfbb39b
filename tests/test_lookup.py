"""Find and act on a person by email (issue 15, item 2): the admin routes and ``funnelpilot contacts``,
for a person who signed up through the landing page's form, confirmed through the emailed link,
opened and clicked their welcome email (a human) and had their pixel prefetched by Apple Mail."""
import io
import json
import re
from email import message_from_bytes, policy

from conftest import executions

from funnelpilot import tokens
from funnelpilot_local import audience_cli, cli

ADMIN = {"x-api-key": "local-admin-key"}
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


class RuntimeApi(audience_cli.AdminApi):
    """The CLI's admin client, answered by the test's runtime instead of `make serve`."""

    def __init__(self, rt):
        super().__init__("http://127.0.0.1:3000", api_key="local-admin-key")
        self.rt = rt

    def request(self, method, path, body=None):
        resp = self.rt.http(method, path, json_body=body, headers={"x-api-key": self.api_key})
        return resp.status, (resp.json() if resp.body else None)


def cli_run(rt, *argv) -> tuple[int, str]:
    parser_args = cli_args(*argv)
    out = io.StringIO()
    return audience_cli.run(parser_args, api=RuntimeApi(rt), out=out), out.getvalue()


def cli_args(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    audience_cli.register(parser.add_subparsers(dest="contacts_command", required=True))
    return parser.parse_args(argv)


def mails(rt):
    rt.flush_outbox()
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(rt.outbox.glob("*.eml"))]


def landing_page_signup(rt, email: str) -> str:
    """The example landing page's form (site/index.html), posted without JavaScript, then the
    confirmation link clicked: the real routes only."""
    resp = rt.http("POST", "/signup", form={"email": email, "first_name": "Rosa", "list": "newsletter",
                                            "lead_magnet": "guide", "website": "", "consent": "true"},
                   headers={"referer": "http://localhost:3000/?utm_source=x", "user-agent": BROWSER},
                   source_ip="203.0.113.7")
    assert resp.status == 202, resp.body
    assert rt.settle()
    [confirm] = [m for m in mails(rt) if m["Subject"] == "Please confirm your subscription"]
    path = re.search(r"http://127\.0\.0\.1:3000(/confirm/\S+)", confirm.get_body(("plain",)).get_content()).group(1)
    assert rt.http("GET", path, headers={"user-agent": BROWSER}, source_ip="203.0.113.7").status == 200
    assert rt.settle()
    return resp.json()["contact_id"]


def welcome_1(rt, cid: str) -> dict:
    items = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :m)",
                                        ExpressionAttributeValues={":c": {"S": cid}, ":m": {"S": "MSG#"}})["Items"]
    [m] = [i for i in items if i["template"]["S"] == "welcome-1"]
    return {"message_id": m["message_id"]["S"], "links": json.loads(m["links"]["S"])}


def test_show_finds_a_landing_page_signup_by_email_and_shows_the_journey(rt, tap):
    cid = landing_page_signup(rt, "rosa.m@example.com")
    rt.advance(3600)
    m = welcome_1(rt, cid)
    rt.http("GET", f"/o/{tokens.sign('o', cid, m['message_id'])}", headers={"user-agent": "Mozilla/5.0"},
            source_ip="17.58.63.9")  # Apple Mail Privacy Protection's prefetch: a machine
    rt.advance(600)
    guide = next(i for i, link in enumerate(m["links"]) if "guide" in (link if isinstance(link, str) else link["url"]))
    assert rt.http("GET", f"/c/{tokens.sign('c', cid, m['message_id'], str(guide))}",
                   headers={"user-agent": BROWSER}, source_ip="198.51.100.23").status == 302
    assert rt.settle()

    # the address as support pastes it from a ticket: any case, spaces around
    resp = rt.http("POST", "/contacts/lookup", json_body={"email": "  Rosa.M@Example.COM "}, headers=ADMIN)
    assert resp.status == 200 and resp.headers["cache-control"] == "no-store"
    card = resp.json()
    assert card["contact_id"] == cid
    assert card["profile"]["email"] == "rosa.m@example.com" and card["profile"]["status"] == "active"
    assert card["lists"] == ["newsletter"] and card["lead_magnets"] == ["guide"]
    assert [(c["list"], c["confirmation"]) for c in card["consent"]] == [("newsletter", "unconfirmed"),
                                                                         ("newsletter", "confirmed")]
    assert card["consent"][0]["source"] == "http://localhost:3000/" and card["consent"][0]["ip"] == "203.0.113.7"
    assert card["scores"]["capture"] > 0  # the human click scored
    journeys = {f["funnel"]: f for f in card["funnels"]}
    welcome = journeys["welcome"]
    [execution] = executions(rt, "welcome")
    assert welcome["status"] == "running" and welcome["state"] == "Wait 2 days"
    assert welcome["execution_arn"] == execution["executionArn"]
    assert welcome["console_url"] == ("https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1"
                                      f"#/v2/executions/details/{execution['executionArn']}")
    assert journeys["delivery"]["status"] == "running"  # waiting for a click on the download link
    welcome_events = [(e["event"], e.get("human"), e.get("reason")) for e in card["timeline"]
                      if e["template"] == "welcome-1"]
    assert welcome_events == [("sent", None, None), ("opened", False, "apple_mpp"), ("clicked", True, None)]
    assert next(e["url"] for e in card["timeline"] if e["event"] == "clicked").startswith("https://example.com/")

    # the same through the CLI: one line per fact, the console link included
    code, text = cli_run(rt, "show", "rosa.m@example.com")
    assert code == 0
    assert "Rosa <rosa.m@example.com>" in text and f"contact id  {cid}" in text
    assert re.search(r"welcome\s+running\s+Wait 2 days", text) and welcome["console_url"] in text
    assert re.search(r"clicked\s+welcome-1\s+human\s+https://example.com/", text)
    assert re.search(r"opened\s+welcome-1\s+machine: apple_mpp", text)


def test_unknown_or_bad_email_and_no_admin_key(rt):
    assert rt.http("POST", "/contacts/lookup", json_body={"email": "nobody@example.com"}, headers=ADMIN).status == 404
    bad = rt.http("POST", "/contacts/lookup", json_body={"email": "not an address"}, headers=ADMIN)
    assert bad.status == 400 and bad.json()["field"] == "email"
    assert rt.http("POST", "/contacts/lookup", json_body={"email": "nobody@example.com"}).status == 403
    code, _ = cli_run(rt, "show", "nobody@example.com")
    assert code == 1


def test_tag_untag_set_export_and_erase_by_email(rt, tap):
    cid = landing_page_signup(rt, "lee@example.com")
    code, text = cli_run(rt, "tag", "lee@example.com", "vip", "webinar")
    assert code == 0 and "tags:    vip, webinar" in text
    code, text = cli_run(rt, "untag", "lee@example.com", "webinar")
    assert code == 0 and "tags:    vip\n" in text
    code, text = cli_run(rt, "set", "lee@example.com", "employees=12", "company=Acme Ltd")
    assert code == 0 and "fields:  company=Acme Ltd, employees=12" in text  # a number, as fields.yaml declares
    undeclared = rt.http("PATCH", f"/contacts/{cid}", json_body={"set": {"plan": "pro"}}, headers=ADMIN)
    assert undeclared.status == 400 and undeclared.json()["field"] == "plan"
    assert rt.http("PATCH", f"/contacts/{cid}", json_body={"set": {"employees": "many"}},
                   headers=ADMIN).json()["field"] == "employees"
    assert [e["detail"]["tag"] for e in tap.events("contact.tagged")] == ["vip", "webinar"]
    assert [e["detail"]["tag"] for e in tap.events("contact.untagged")] == ["webinar"]
    [updated] = tap.events("contact.updated")
    assert updated["detail"]["fields"] == ["company", "employees"] and updated["detail"]["contact_id"] == cid
    bad = rt.http("PATCH", f"/contacts/{cid}", json_body={"tag": ["Not A Slug!"]}, headers=ADMIN)
    assert bad.status == 400 and bad.json()["field"] == "tag"
    assert rt.http("PATCH", "/contacts/nobody", json_body={"tag": ["x"]}, headers=ADMIN).status == 404
    assert cli_run(rt, "set", "lee@example.com", "oops")[0] == 1

    code, text = cli_run(rt, "export", "lee@example.com")
    exported = json.loads(text)
    assert code == 0 and exported["contact_id"] == cid
    assert exported["items"]["profile"][0]["tags"] == ["vip"]
    assert exported["items"]["profile"][0]["properties"] == {"company": "Acme Ltd", "employees": 12}

    assert cli_run(rt, "erase", "lee@example.com")[0] == 1  # not without --yes
    code, text = cli_run(rt, "erase", "lee@example.com", "--yes")
    assert code == 0 and text == f"erased contact {cid}\n"
    assert rt.settle()
    assert rt.http("POST", "/contacts/lookup", json_body={"email": "lee@example.com"}, headers=ADMIN).status == 404


def test_the_contacts_command_is_wired_into_funnelpilot(capsys):
    try:
        cli.main(["contacts", "show", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "funnelpilot contacts show ann@example.com" in capsys.readouterr().out


def test_the_address_looked_up_is_in_no_log_record(rt, logs):
    cid = landing_page_signup(rt, "pia@example.com")
    before = len(logs())
    resp = rt.http("POST", "/contacts/lookup", json_body={"email": "pia@example.com"}, headers=ADMIN)
    assert resp.status == 200
    records = logs()[before:]
    assert any('"lookup"' in r and cid in r for r in records)  # the line names the contact id
    assert not [r for r in records if "pia@example.com" in r]


def test_stack_requests_are_sigv4_signed_for_execute_api(monkeypatch):
    """`--stack`: the request carries botocore's SigV4 signature for the execute-api service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    api = audience_cli.AdminApi("https://abc123.execute-api.eu-west-1.amazonaws.com", region="eu-west-1")
    headers = api._signed("POST", api.base_url + "/contacts/lookup", b'{"email": "a@example.com"}',
                          {"content-type": "application/json"})
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in auth and "SignedHeaders=" in auth
    assert "X-Amz-Date" in headers

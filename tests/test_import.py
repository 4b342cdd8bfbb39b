"""Importing a list (issue 15): every row validated before anything is written, then written once;
suppressions of the previous tool (and of funnelpilot) honoured forever; nobody emailed unless asked."""
import csv
import json
import email
import io

from conftest import SINGLE, ip_for

from funnelpilot import tokens
from funnelpilot_local import cli, contacts_cli
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

HEADER = ["Email Address", "First Name", "last_name", "company", "role", "lists", "tags", "timezone", "consent_date",
          "consent_source", "status"]
STATUSES = ["subscribed"] * 7 + ["unsubscribed", "bounced", "complained"]
# (column, bad value) of the 30 invalid rows, three of each kind
BAD = [("Email Address", "not-an-address"), ("timezone", "Mars/Olympus"), ("status", "maybe"),
       ("consent_date", "yesterday"), ("role", "ceo"), ("lists", "no-such-list"), ("tags", "vip tier"),
       ("employees", "many"), ("First Name", "http://spam.example"), ("Email Address", "")]


def people(n: int, prefix: str = "p") -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"Email Address": f"{prefix}{i}@Example.com", "First Name": f"Name{i}", "last_name": "Lee",
                     "company": "Acme" if i % 3 else "", "role": "founder" if i % 5 == 0 else "", "employees": str(i % 50),
                     "lists": "newsletter" if i % 4 else "newsletter;insiders", "tags": "imported;vip" if i % 7 == 0 else "",
                     "timezone": "Europe/Paris" if i % 2 else "America/New_York", "consent_date": "2024-05-01",
                     "consent_source": "old signup form", "status": STATUSES[i % 10]})
    return rows


def write_csv(path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HEADER + ["employees"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())


def table_items(rt) -> list[dict]:
    pages = rt.client("dynamodb").get_paginator("scan").paginate(TableName="ContactsTable")
    return sorted((i for p in pages for i in p["Items"]), key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def recipients(before: int) -> list[str]:
    return [email.message_from_string(raw)["To"] for _, raw in sent_emails(ACCOUNT, REGION)[before:]]


def profile(rt, address: str) -> dict:
    item = rt.client("dynamodb").get_item(TableName="ContactsTable", Key={
        "pk": {"S": tokens.contact_id(address)}, "sk": {"S": "PROFILE"}})["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def run_import(rt, path, enter=None) -> tuple:
    """What `funnelpilot contacts import PATH` does, on the test's runtime: validate, then write."""
    args = cli_args(path, enter=enter)
    batch = contacts_cli.batch_input(args, path.name)
    validation = contacts_cli.read_and_validate(path, batch)
    if validation.errors:
        return validation, None
    counts = contacts_cli.import_rows(rt.invoke, validation.rows, batch)
    if enter:  # else nothing to wait for (the table's stream carries no outbox item)
        assert rt.settle()
    return validation, counts


def cli_args(path, enter=None, list_name="newsletter", mapping=()):
    return type("Args", (), {"map": list(mapping), "enter": enter, "list": list_name, "file": path})


def test_a_thousand_rows_with_thirty_invalid_then_fixed_then_again(rt, tmp_path, capsys):
    # someone who unsubscribed from funnelpilot itself, and is "subscribed" in the old tool's export
    rt.http("POST", "/signup", json_body={"email": "p0@example.com", "consent": True, "list": SINGLE},
            source_ip=ip_for("p0@example.com"))
    assert rt.settle()
    rt.client("dynamodb").update_item(TableName="ContactsTable", Key={
        "pk": {"S": tokens.contact_id("p0@example.com")}, "sk": {"S": "PROFILE"}},
        UpdateExpression="SET #s = :u", ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":u": {"S": "unsubscribed"}})
    rows = people(1000)
    assert rows[0]["status"] == "subscribed"
    broken = [dict(r) for r in rows]
    bad_lines = set()
    for k in range(30):
        i = 17 + 31 * k
        column, value = BAD[k % len(BAD)]
        broken[i][column] = value
        bad_lines.add(i + 2)  # line 1 is the header
    broken.insert(500, dict(broken[499]))  # a duplicate row of one address: merged, not an error
    bad_lines = {n + (n > 501) for n in bad_lines}
    path = tmp_path / "members.csv"
    write_csv(path, broken)
    before = table_items(rt)
    sent_before = len(sent_emails(ACCOUNT, REGION))

    # 1. the CLI lists the 30, writes nothing and exits 1 (it needs no runtime to say so)
    assert cli.main(["contacts", "import", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    listed = [line for line in err if line.startswith("line ")]
    assert len(listed) == 30
    assert {int(line.split(",")[0].split()[1]) for line in listed} == bad_lines
    assert any("column timezone: timezone must be an IANA time zone" in line for line in listed)
    assert any("column role: role must be one of founder" in line for line in listed)
    assert any("column lists: unknown list" in line for line in listed), [l for l in listed if "lists" in l]
    assert err[-1] == "members.csv: 1001 rows: 971 valid, 30 invalid (30 problems: Email Address 6, timezone 3, status 3, " \
                      "consent_date 3, role 3, lists 3, tags 3, employees 3, First Name 3); nothing was written"
    validation, counts = run_import(rt, path)
    assert counts is None and len(validation.errors) == 30
    assert table_items(rt) == before

    # 2. fixed: 1,000 people written, nothing sent, no funnel started
    write_csv(path, rows)
    validation, counts = run_import(rt, path)
    assert validation.errors == []
    assert counts == {"created": 999, "updated": 1, "unchanged": 0, "skipped": 0, "entered": 0}
    after = table_items(rt)
    assert len([i for i in after if i["sk"]["S"] == "PROFILE"]) == 1000
    assert recipients(sent_before) == []
    p0 = tokens.contact_id("p0@example.com")  # the one who signed up, and got a welcome, before
    assert not [i for i in after if i["sk"]["S"].startswith(("FUNNEL#", "MSG#", "OUTBOX#")) and i["pk"]["S"] != p0]
    ann = profile(rt, "p1@example.com")
    assert ann["status"] == "active" and ann["first_name"] == "Name1" and ann["timezone"] == "Europe/Paris"
    assert ann["properties"] == {"last_name": {"S": "Lee"}, "company": {"S": "Acme"}, "employees": {"N": "1"}}
    assert profile(rt, "p7@example.com")["status"] == "unsubscribed"
    assert profile(rt, "p8@example.com")["status"] == "suppressed"
    assert profile(rt, "p0@example.com")["status"] == "unsubscribed"  # funnelpilot's unsubscribe stands
    consent = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :s)",
                                          ExpressionAttributeValues={":c": {"S": tokens.contact_id("p4@example.com")},
                                                                     ":s": {"S": "CONSENT#"}})["Items"]
    assert [(c["list_name"]["S"], c["source"]["S"], c["given_at"]["S"], "ip" in c) for c in consent] == [
        ("insiders", "imported from members.csv on 2026-03-02, source: old signup form, status there: subscribed",
         "2024-05-01", False),
        ("newsletter", "imported from members.csv on 2026-03-02, source: old signup form, status there: subscribed",
         "2024-05-01", False)]

    # 3. the same file again changes nothing
    validation, counts = run_import(rt, path)
    assert counts == {"created": 0, "updated": 0, "unchanged": 1000, "skipped": 0, "entered": 0}
    assert table_items(rt) == after

    # 4. the old tool said "subscribed" again for everyone: nobody unsubscribed or suppressed comes back, and
    # handing new people to the welcome funnel emails only the subscribed ones
    for r in rows:
        r["status"] = "subscribed"
    write_csv(path, rows)
    validation, counts = run_import(rt, path, enter="welcome")
    assert counts["created"] == 0 and counts["entered"] == 0  # only new people are handed to a funnel
    assert table_items(rt) == after
    rt.advance(60)  # past the second p0's welcome was sent in (SES's sending rate)
    newcomers = [r | {"timezone": "Europe/Paris"} for r in people(20, prefix="n")]  # 11:00 there: no quiet hours
    write_csv(path, newcomers)
    validation, counts = run_import(rt, path, enter="welcome")
    assert counts == {"created": 20, "updated": 0, "unchanged": 0, "skipped": 0, "entered": 14}
    expected = {r["Email Address"].lower() for r in newcomers if r["status"] == "subscribed"}
    assert sorted(recipients(sent_before)) == sorted(expected)
    assert rt.dead_letters == [] and rt.errors == []


def test_the_import_state_machine_reads_the_uploaded_csv_and_writes_each_row_once(rt, tmp_path):
    """What `contacts import --stack` runs: the Distributed Map's CSV ItemReader over the uploaded file
    (locally each child gets a batch of one row: moto does not parse ItemBatcher)."""
    rows = people(6, prefix="s")
    path = tmp_path / "export.csv"
    write_csv(path, rows)
    batch = contacts_cli.batch_input(cli_args(path), path.name)
    assert contacts_cli.read_and_validate(path, batch).errors == []
    bucket = rt.template.physical["ImportBucket"]
    rt.client("s3").put_object(Bucket=bucket, Key="imports/run-1/export.csv", Body=path.read_bytes())
    sfn = rt.client("stepfunctions")
    arn = next(a for a in rt.state_machine_arns() if a.endswith("-import"))
    for run in ("run-1", "run-1-again"):
        execution = sfn.start_execution(stateMachineArn=arn, name=run, input=json.dumps(
            {"bucket": bucket, "key": "imports/run-1/export.csv", **batch}))["executionArn"]
        assert rt.settle()
        done = sfn.describe_execution(executionArn=execution)
        assert done["status"] == "SUCCEEDED", done
        totals = {k: sum(c[k] for c in json.loads(done["output"])) for k in ("created", "unchanged")}
        assert totals == ({"created": 6, "unchanged": 0} if run == "run-1" else {"created": 0, "unchanged": 6})
    assert profile(rt, "s1@example.com")["properties"] == {"last_name": {"S": "Lee"}, "company": {"S": "Acme"},
                                                           "employees": {"N": "1"}}


def test_imported_people_are_members_of_their_lists_and_a_suppression_leaves_them(rt, tmp_path, test_lists):
    """An import emits no event for the segment function: its own writes keep the lists' segments,
    which `contacts export --list` reads."""
    from test_lookup import cli_run

    test_lists["newsletter"] = {"double_opt_in": False}
    rt.http("POST", "/signup", json_body={"email": "old@example.com", "consent": True, "list": "newsletter"},
            source_ip=ip_for("old@example.com"))
    assert rt.settle()
    rows = [{"Email Address": e, "lists": lists, "status": status} for e, lists, status in [
        ("ann@example.com", "newsletter;insiders", "subscribed"), ("bob@example.com", "newsletter", "subscribed"),
        ("cat@example.com", "newsletter", "unsubscribed"), ("dan@example.com", "newsletter", "bounced"),
        ("old@example.com", "newsletter", "unsubscribed")]]
    path = tmp_path / "members.csv"
    write_csv(path, rows)

    def exported(list_name: str) -> list[str]:
        code, text = cli_run(rt, "export", "--list", list_name)
        assert code == 0, text
        return sorted(r["email"] for r in csv.DictReader(io.StringIO(text)))

    assert exported("newsletter") == ["old@example.com"]
    validation, counts = run_import(rt, path)
    assert validation.errors == [] and counts["created"] == 4 and counts["updated"] == 1
    assert exported("newsletter") == ["ann@example.com", "bob@example.com"]
    assert exported("insiders") == ["ann@example.com"]
    assert profile(rt, "ann@example.com")["segments"] == ["list:insiders", "list:newsletter"]
    assert "segments" not in profile(rt, "cat@example.com")
    assert "list:newsletter" not in profile(rt, "old@example.com").get("segments", [])
    after = table_items(rt)

    _, counts = run_import(rt, path)  # again: nothing changes
    assert counts == {"created": 0, "updated": 0, "unchanged": 5, "skipped": 0, "entered": 0}
    assert table_items(rt) == after
    assert rt.dead_letters == [] and rt.errors == []

"""Custom fields (infra/fields.yaml), the consent wording version and the time zone on signup:
kept, validated (400 naming the field), never silently dropped; templates use them."""
import email
from email import policy

from conftest import SINGLE, ip_for

from funnelpilot import tokens
from funnelpilot.audience import fields
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION


def post(rt, **form):
    address = form.setdefault("email", "ann@example.com")
    return rt.http("POST", "/signup", form={"consent": "true", "list": SINGLE, **form}, source_ip=ip_for(address))


def items(rt, address: str) -> dict:
    found = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c",
                                        ExpressionAttributeValues={":c": {"S": tokens.contact_id(address)}})["Items"]
    return {i["sk"]["S"]: i for i in found}


def test_declared_fields_are_stored_and_the_welcome_uses_them(rt):
    before = len(sent_emails(ACCOUNT, REGION))
    resp = post(rt, first_name="Ann", company="Acme & Co", role="founder", employees="12", timezone="Europe/Paris",
                consent_version="2026-01")
    assert resp.status == 202, resp.body
    assert rt.settle()
    stored = items(rt, "ann@example.com")
    assert stored["PROFILE"]["properties"] == {"M": {"company": {"S": "Acme & Co"}, "role": {"S": "founder"},
                                                     "employees": {"N": "12"}}}
    assert stored["PROFILE"]["timezone"] == {"S": "Europe/Paris"}
    [consent] = [v for k, v in stored.items() if k.startswith("CONSENT#")]
    assert consent["wording_version"] == {"S": "2026-01"}
    [(_, raw)] = sent_emails(ACCOUNT, REGION)[before:]
    body = email.message_from_string(raw, policy=policy.default).get_body(("plain",)).get_content()
    assert "Thanks for joining from Acme & Co." in body
    # a second signup sets the fields it sends and keeps the others
    assert post(rt, role="marketing").status == 202
    assert rt.settle()
    assert items(rt, "ann@example.com")["PROFILE"]["properties"]["M"] == {
        "company": {"S": "Acme & Co"}, "role": {"S": "marketing"}, "employees": {"N": "12"}}


def test_bad_fields_are_refused_naming_the_field_and_nothing_is_stored(rt):
    cases = [({"favourite_colour": "blue"}, "favourite_colour", "unknown field 'favourite_colour'"),
             ({"role": "ceo"}, "role", "role must be one of founder, marketing, engineering, sales, other"),
             ({"employees": "many"}, "employees", "employees must be a number"),
             ({"timezone": "Mars/Olympus"}, "timezone", "timezone must be an IANA time zone"),
             ({"timezone": "Europe"}, "timezone", "timezone must be an IANA time zone"),
             ({"consent_version": "1999"}, "consent_version", "unknown consent wording version '1999'")]
    for extra, field, message in cases:
        resp = post(rt, email="bob@example.com", **extra)
        assert resp.status == 400, (extra, resp.body)
        assert resp.json()["field"] == field and resp.json()["error"].startswith(message), resp.json()
    assert items(rt, "bob@example.com") == {}


def test_undeclared_fields_can_be_kept_by_setting(rt, monkeypatch):
    monkeypatch.setattr(fields, "_doc", lambda: {"undeclared": "keep", "fields": {}})
    assert post(rt, email="cy@example.com", favourite_colour="blue").status == 202
    assert rt.settle()
    assert items(rt, "cy@example.com")["PROFILE"]["properties"] == {"M": {"favourite_colour": {"S": "blue"}}}


def test_every_problem_of_an_import_row_is_listed(rt):  # rt: the content (lists.yaml, fields.yaml) it reads
    from funnelpilot.audience import importer

    text = "email,role,employees,timezone,status\nnot-an-address,ceo,many,Mars/Olympus,maybe\nok@example.com,,,,\n"
    result = importer.validate(text, {}, "newsletter")
    assert result.errors == ["line 2, column email: email is not a valid address",
                             "line 2, column status: status must be one of subscribed, unsubscribed, bounced, complained",
                             "line 2, column timezone: timezone must be an IANA time zone such as Europe/Paris",
                             "line 2, column role: role must be one of founder, marketing, engineering, sales, other",
                             "line 2, column employees: employees must be a number"]
    assert result.summary().startswith("2 rows: 1 valid, 1 invalid (5 problems: ")

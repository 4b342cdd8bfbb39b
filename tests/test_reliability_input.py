"""Bad input on every operation of the API's OpenAPI document (infra/openapi.json, generated
from template.yaml) with hypothesis: never a 5xx or an unhandled exception, only statuses
the document declares; every 4xx is a JSON error naming the problem (or, for a page a
browser opens, an HTML page); contact data never becomes a header or template code."""
import json
import re
import string
from dataclasses import dataclass
from email import message_from_bytes, policy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnelpilot import sequence
from funnelpilot.channels import emails
from funnelpilot_local import openapi
from funnelpilot_local.runtime import LOCAL_ADMIN_KEY, ROOT
from funnelpilot.models import PROFILE, Contact


@dataclass(frozen=True)
class Operation:
    """One operation of the OpenAPI document, as the fuzzer needs it."""
    method: str
    path: str
    params: tuple[str, ...]  # path parameters, in path order
    content_types: tuple[str, ...]  # of the request body; () when the operation takes none
    auth: str | None  # "AWS_IAM" for the sigv4 scheme, as in template.yaml
    fields: tuple[str, ...] = ()  # top-level properties of the body schema(s)
    enums: tuple = ()  # every enum value in the body schema(s): type names, "One-Click", ...
    responses: tuple[str, ...] = ()  # the documented status codes

    @property
    def has_body(self) -> bool:
        return bool(self.content_types)


def _resolve(doc: dict, schema: dict) -> dict:
    return doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


def _schemas(doc: dict, schema: dict):
    """The schema and every schema it names ($ref, oneOf, properties, items...), depth first."""
    schema = _resolve(doc, schema)
    yield schema
    for sub in [*schema.get("oneOf", []), *schema.get("anyOf", []), *schema.get("properties", {}).values(),
                *[schema[k] for k in ("items", "additionalProperties") if isinstance(schema.get(k), dict)]]:
        yield from _schemas(doc, sub)


def _operations() -> list[Operation]:
    doc = json.loads((ROOT / openapi.PATH).read_text())
    ops = []
    for path, item in sorted(doc["paths"].items()):
        for method, op in sorted(item.items()):
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"{(\w+)}", path)), (method, path)
            content = op.get("requestBody", {}).get("content", {})
            variants = [_resolve(doc, o) for m in content.values() for r in [_resolve(doc, m["schema"])]
                        for o in r.get("oneOf", [r])]
            enums = {e for m in content.values() for sub in _schemas(doc, m["schema"]) for e in sub.get("enum", [])}
            ops.append(Operation(method.upper(), path, tuple(re.findall(r"{(\w+)}", path)), tuple(sorted(content)),
                                 "AWS_IAM" if {"sigv4": []} in op.get("security", []) else None,
                                 tuple(sorted({f for v in variants for f in v.get("properties", {})})),
                                 tuple(sorted(enums, key=repr)), tuple(sorted(op["responses"]))))
    return ops


OPERATIONS = _operations()

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SIGNUP_FIELDS = list(next(o for o in OPERATIONS if (o.method, o.path) == ("POST", "/signup")).fields)
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                 "application/json; charset=utf-8", None]

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
emails_like = st.one_of(st.emails().map(str), st.text(max_size=60),
                        st.builds(lambda a, b: f"{a}@{b}.example", st.text(string.ascii_letters + "._%+-\r\n", max_size=20),
                                  st.text(string.ascii_lowercase + "-", min_size=1, max_size=10)))
signup_fields = st.fixed_dictionaries({}, optional={
    **{f: json_values for f in SIGNUP_FIELDS},
    "email": emails_like, "consent": st.sampled_from([True, "true", "on", False, "no", 1, None]),
})
bodies = st.one_of(
    signup_fields.map(json.dumps),
    st.dictionaries(st.sampled_from(SIGNUP_FIELDS), st.text(max_size=30), max_size=5).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items())),
    st.binary(max_size=300),
    st.text(max_size=300),
    st.none(),
)
headers = st.dictionaries(st.sampled_from(["x-api-key", "cookie", "origin", "user-agent", "x-forwarded-for",
                                           "accept", "referer"]),
                          st.text(string.printable, max_size=40), max_size=3)
def op_bodies(op: Operation):
    """Junk bodies, plus JSON and form bodies made of the operation's own field names and enum values."""
    if not op.fields:
        return bodies
    values = json_values | st.sampled_from(op.enums or ("x",))
    named = st.dictionaries(st.sampled_from(op.fields), values, max_size=6)
    return st.one_of(bodies, named.map(json.dumps),
                     named.map(lambda d: "&".join(f"{k}={v}" for k, v in d.items())))


segments = st.text(string.ascii_letters + string.digits + "-_.~%=:@!$'()*+,;", min_size=1, max_size=60)


def check(resp, route: Operation) -> None:
    assert resp.status < 500, (route, resp.status, resp.body[:300])
    assert str(resp.status) in route.responses, (route.method, route.path, resp.status, "not in infra/openapi.json")
    if 400 <= resp.status < 500:
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("text/html"):  # a page a browser opened from an email (e.g. an expired link)
            assert "{token}" in route.path and resp.body.strip()
            return
        assert ctype.startswith("application/json"), (route, resp.status, ctype)
        body = json.loads(resp.body)
        if resp.status == 403 and body == {"message": "Forbidden"} and route.auth == "AWS_IAM":
            return  # API Gateway's own answer to an unsigned admin request; the function never ran
        assert isinstance(body.get("error"), str) and body["error"], body
        if resp.status == 400:
            assert body.get("field"), body


def fill(op: Operation, values: dict[str, str]) -> str:
    """The operation's path template with its path parameters filled in."""
    return re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "x"), op.path)


def test_the_document_has_every_route_the_runtime_serves(rt):
    assert {(op.method, op.path, op.auth) for op in OPERATIONS} == {(r.method, r.path, r.auth) for r in rt.routes}


@SETTINGS
@given(data=st.data())
def test_fuzz_every_route(rt, data):
    for op in OPERATIONS:
        values = data.draw(st.fixed_dictionaries({name: segments for name in op.params}),
                           label=f"{op.method} {op.path} params")
        # a body for every operation that may carry one: declared ones get their own content
        # types among the wrong ones, undeclared ones (DELETE) get junk
        body = data.draw(op_bodies(op), label="body") if op.method in ("POST", "PUT", "PATCH", "DELETE") else None
        hdrs = data.draw(headers, label="headers")
        key = data.draw(st.sampled_from([None, rt.admin_key, rt.template.parameters.get("EventsApiKey"), "wrong"]),
                        label="x-api-key")
        if key:
            hdrs["x-api-key"] = key
        ctype = data.draw(st.sampled_from(list(op.content_types) + CONTENT_TYPES), label="content-type")
        if ctype:
            hdrs["content-type"] = ctype
        check(rt.http(op.method, fill(op, values), body=body, headers=hdrs), op)  # also: a documented status


@SETTINGS
@given(fields=signup_fields)
def test_fuzz_signup_fields(rt, fields):
    resp = rt.http("POST", "/signup", json_body=fields)
    assert resp.status in (202, 303, 400, 429), (resp.status, resp.body)  # 429: over a signup limit (one IP)
    if resp.status == 400:
        assert resp.json()["field"] in SIGNUP_FIELDS + ["body"]
    if resp.status == 429:
        assert resp.json()["field"] in ("ip", "email") and int(resp.headers["retry-after"]) > 0


def test_oversized_and_invalid_bodies_on_every_body_route(rt):
    with_body = [op for op in OPERATIONS if op.has_body]
    assert {op.path for op in with_body} == {"/signup", "/events", "/collect", "/u/{token}", "/contacts/lookup",
                                             "/contacts/{id}", "/broadcasts", "/broadcasts/{id}",
                                             "/broadcasts/{id}/preview", "/broadcasts/{id}/test",
                                             "/broadcasts/{id}/schedule"}
    for op in with_body:
        path = fill(op, {})
        auth = {"x-api-key": LOCAL_ADMIN_KEY} if op.auth == "AWS_IAM" else {}  # the function itself reads the body
        for body, ctype in [(b"{" + b'"a": "' + b"x" * 1_000_000 + b'"}', "application/json"),
                            (b'{"email": "\xff\xfe@example.com", "consent": true}', "application/json"),
                            (b"\x00" * 100, "application/json"),
                            (b"email=%ff%fe%00&consent=true", "application/x-www-form-urlencoded"),
                            *[(b"x" * 1_000_000, declared) for declared in op.content_types]]:
            check(rt.http(op.method, path, body=body, headers={"content-type": ctype, **auth}), op)


def _mime(first_name: str):
    context = sequence.template_context(Contact("c", PROFILE, first_name=first_name or None), "m1")
    rendered = emails.render("welcome-1", context)
    raw = emails.build_mime(to="a@example.com", rendered=rendered, message_id="m1",
                            headers={"List-Unsubscribe": "<https://x.test/u/t>"}, email="welcome-1", funnel="welcome")
    return rendered, message_from_bytes(raw, policy=policy.default)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
       | st.sampled_from(["{{ 7*7 }}", "{% print 7*7 %}", "{{ ''.__class__.__mro__ }}", "${7*7}", "<%= 7*7 %>",
                          "Ann\u2028Bcc: evil@x.test", "Ann\x85Bcc: evil@x.test", "=?utf-8?q?Bcc:_x?=",
                          "Ann\r\nBcc: evil@x.test"]))
def test_contact_data_never_becomes_a_header_or_template_code(rt, name):
    rendered, mail = _mime(name)
    assert sorted(k.lower() for k in mail.keys()) == sorted(
        ["from", "reply-to", "to", "subject", "date", "message-id", "x-funnelpilot-message-id", "list-unsubscribe",
         "x-ses-message-tags", "mime-version", "content-type"])
    assert "\n" not in mail["Subject"] and "\r" not in mail["Subject"]
    if "{{" in name or "{%" in name:
        assert "49" not in rendered.text.replace(name, "") and name.strip() in rendered.text

"""infra/openapi.json: generated from template.yaml, committed up to date, structurally valid
(openapi-spec-validator is not a dependency: the checks below are the structural ones)."""
import json
import re
import shutil

from funnelpilot import contacts
from funnelpilot_local import openapi
from funnelpilot_local.cli import main
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import load_yaml

DOC = json.loads((ROOT / openapi.PATH).read_text())
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def template_routes() -> set[tuple[str, str, str | None]]:
    """(method, path, authorizer) of every HttpApi event, read from template.yaml directly."""
    out = set()
    for res in load_yaml(ROOT / "template.yaml")["Resources"].values():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        for event in (res["Properties"].get("Events") or {}).values():
            if event["Type"] == "HttpApi":
                p = event["Properties"]
                out.add((p["Method"].lower(), p["Path"], (p.get("Auth") or {}).get("Authorizer")))
    return out


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method, path, op


def test_committed_document_is_the_generated_one():
    assert (ROOT / openapi.PATH).read_text() == openapi.render(ROOT), "run `make openapi` and commit infra/openapi.json"


def test_every_template_route_is_an_operation_and_nothing_else():
    routes = template_routes()
    assert len(routes) >= 15
    documented = {(m, p) for m, p, _ in operations(DOC)}
    assert documented == {(m, p) for m, p, _ in routes}
    for method, path, auth in routes:
        op = DOC["paths"][path][method]
        assert (op.get("security") == [{"sigv4": []}]) == (auth == "AWS_IAM"), (method, path)
    assert DOC["paths"]["/events"]["post"]["security"] == [{"eventsApiKey": []}]


def test_check_fails_when_a_route_is_added_without_regenerating(tmp_path, capsys):
    (tmp_path / "infra").mkdir()
    shutil.copy(ROOT / openapi.PATH, tmp_path / openapi.PATH)
    template = (ROOT / "template.yaml").read_text()
    (tmp_path / "template.yaml").write_text(template)
    assert main(["openapi", "--check", "--root", str(tmp_path)]) == 0
    anchor = "        Collect:\n          Type: HttpApi\n"
    assert anchor in template
    (tmp_path / "template.yaml").write_text(template.replace(anchor, (
        "        Extra:\n          Type: HttpApi\n"
        "          Properties: { ApiId: !Ref HttpApi, Method: GET, Path: /extra }\n" + anchor)))
    assert main(["openapi", "--check", "--root", str(tmp_path)]) == 1
    assert "make openapi" in capsys.readouterr().err
    assert main(["openapi", "--root", str(tmp_path)]) == 0
    assert "/extra" in json.loads((tmp_path / openapi.PATH).read_text())["paths"]


def test_structure():
    assert DOC["openapi"] == "3.0.3"
    assert {"openapi", "info", "paths"} <= set(DOC) and {"title", "version"} <= set(DOC["info"])
    ids = [op["operationId"] for _, _, op in operations(DOC)]
    assert len(ids) == len(set(ids))
    schemes = DOC["components"]["securitySchemes"]
    for method, path, op in operations(DOC):
        assert method in METHODS and path.startswith("/")
        assert op["responses"] and all(re.fullmatch(r"[1-5]\d\d", code) for code in op["responses"])
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
        assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes)
        for code, response in op["responses"].items():
            assert response["description"]
            if code.startswith("4") and "application/json" in response.get("content", {}):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_ref_resolves():
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(DOC))
    assert refs
    for ref in refs:
        node = DOC
        assert ref.startswith("#/")
        for part in ref[2:].split("/"):
            node = node[part]


def test_request_bodies_match_what_the_functions_read():
    schemas = DOC["components"]["schemas"]
    signup = schemas["Signup"]
    assert set(signup["required"]) == {"email", "consent"}
    assert {"email", "consent", "list", "first_name", "lead_magnet", "timezone", "redirect", "website", "phone",
            "sms_consent", *contacts.UTM_KEYS} == set(signup["properties"])
    body = DOC["paths"]["/signup"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    assert {o["$ref"].rsplit("/", 1)[1] for o in schemas["Event"]["oneOf"]} == {"PageViewed", "OrderPlaced", "Custom"}
    assert "requestBody" not in DOC["paths"]["/o/{token}"]["get"]
    assert DOC["paths"]["/u/{token}"]["post"]["requestBody"]["required"] is False

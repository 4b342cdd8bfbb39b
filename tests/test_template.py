"""template.yaml invariants: the wiring the local runtime and AWS both rely on."""
import json
import re
from pathlib import Path

from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import load_yaml

TEMPLATE = load_yaml(ROOT / "template.yaml")


# Actions AWS authorises on "*" only (no resource-level permissions exist for them).
SCOPELESS_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData"}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _statements(res: dict) -> list[dict]:
    """Every IAM statement a resource declares: SAM Policies, roles, managed and resource policies."""
    props = res.get("Properties", {})
    documents = [p for p in _as_list(props.get("Policies") or []) if isinstance(p, dict) and "Statement" in p]
    documents += [p["PolicyDocument"] for p in _as_list(props.get("Policies") or [])
                  if isinstance(p, dict) and "PolicyDocument" in p]
    if "PolicyDocument" in props:
        documents.append(props["PolicyDocument"])
    return [st for doc in documents for st in _as_list(doc["Statement"])]


def _resource_text(resource) -> str | None:
    """An ARN pattern as written, or None for a Ref/GetAtt (a single resource of the stack)."""
    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def test_no_wildcard_actions_in_any_policy():
    """No '*' action (nor service:* or Get*), no NotAction/NotResource, no '*' resource where
    the actions can be scoped, no ARN with a wildcard region, account or resource name, and
    no SAM policy template opened to '*'."""
    for lid, res in TEMPLATE["Resources"].items():
        for statement in _statements(res):
            assert "NotAction" not in statement and "NotResource" not in statement, lid
            actions = _as_list(statement["Action"])
            assert not any("*" in a for a in actions), (lid, actions)
            for resource in _as_list(statement["Resource"]):
                text = _resource_text(resource)
                if text == "*":
                    assert set(actions) <= SCOPELESS_ACTIONS, (lid, actions)
                elif text is not None:
                    parts = re.sub(r"\$\{[^}]+\}", "X", text).split(":", 5)  # ${AWS::Region} -> X
                    assert len(parts) == 6 and "*" not in parts[3] + parts[4], (lid, text)
                    segments = parts[5].split("/")
                    assert "*" not in (segments[0], segments[1] if len(segments) > 1 else ""), (lid, text)
        for policy in _as_list(res.get("Properties", {}).get("Policies") or []):
            if isinstance(policy, dict) and "Statement" not in policy and "PolicyDocument" not in policy:
                (template, params), = policy.items()
                assert "*" not in json.dumps(params), (lid, template)


def test_every_state_machine_substitution_is_used_and_defined():
    for lid, res in TEMPLATE["Resources"].items():
        if res["Type"] != "AWS::Serverless::StateMachine":
            continue
        props = res["Properties"]
        text = (ROOT / props["DefinitionUri"]).read_text()
        used = set(re.findall(r"\$\{(\w+)\}", text))
        defined = set(props.get("DefinitionSubstitutions", {}))
        assert used == defined, lid
        json.loads(text)


def test_every_function_handler_file_exists():
    for lid, res in TEMPLATE["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            props = res["Properties"]
            module, _, func = props["Handler"].rpartition(".")
            source = Path(ROOT / props["CodeUri"] / f"{module}.py").read_text()
            assert re.search(rf"^(def {func}\(|{func} = )", source, re.M), lid


def test_tables_are_on_demand_with_pitr():
    for lid, res in TEMPLATE["Resources"].items():
        if res["Type"] == "AWS::DynamoDB::Table":
            props = res["Properties"]
            assert props["BillingMode"] == "PAY_PER_REQUEST", lid
            assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, lid


def test_layer_requirements_match_pyproject_pins():
    import tomllib

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    layer = (ROOT / "layers/funnelpilot/requirements.txt").read_text().split()
    assert set(layer) <= set(pins)

"""template.yaml invariants: the wiring the local runtime and AWS both rely on."""
import json
import re
from pathlib import Path

from funnelpilot.local.runtime import ROOT
from funnelpilot.local.template import load_yaml

TEMPLATE = load_yaml(ROOT / "template.yaml")


def _statements(policies) -> list[dict]:
    out = []
    for policy in policies or []:
        if isinstance(policy, dict) and "Statement" in policy:
            out.extend(policy["Statement"])
    return out


def test_no_wildcard_actions_in_any_policy():
    for lid, res in TEMPLATE["Resources"].items():
        props = res.get("Properties", {})
        for statement in _statements(props.get("Policies")):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(a == "*" or a.endswith(":*") for a in actions), lid
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert "*" not in resources, lid


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
            assert f"def {func}(" in source, lid


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

"""template.yaml invariants: the wiring the local runtime and AWS both rely on."""
import json
import re
from pathlib import Path

from funnelpilot_local.aws_rules import iam
from funnelpilot_local.runtime import ROOT
from funnelpilot_local.template import load_yaml

TEMPLATE = load_yaml(ROOT / "template.yaml")



def scopeless(action: str) -> bool:
    """An action with no resource type in the IAM reference: only "*" can allow it."""
    return iam.resource_types(action) == ([], [])


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
                    assert all(scopeless(a) for a in actions), (lid, actions)
                elif text is not None:
                    text = re.sub(r"\$\{\w+\.Arn\}", "arn:X:X:X:X:res", text)  # ${ContactsTable.Arn}/index/gsi1
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


# The Lambda runtime the layer is built for (python3.12, arm64): evaluates dependency markers.
LAMBDA_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _layer_pins() -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "layers/funnelpilot/requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_layer_pins_every_distribution_it_installs_at_the_tested_version():
    """pip installs the requirements and everything they require (on the Lambda runtime):
    every one of those distributions is pinned, at the version installed here (what the tests ran)."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _layer_pins()
    installs, todo = set(), list(pins)
    while todo:
        name = todo.pop()
        if name in installs:
            continue
        installs.add(name)
        for text in metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(LAMBDA_ENV):
                todo.append(canonicalize_name(req.name))
    assert installs == set(pins), f"unpinned: {installs - set(pins)}, not installed: {set(pins) - installs}"
    assert {n: metadata.version(n) for n in pins} == pins
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        assert pins[canonicalize_name(req.name)] == next(iter(req.specifier)).version, text


def _imported_layer_modules(path: Path) -> set[str]:
    """Modules of the funnelpilot package a file imports (at any depth: lazy imports count)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "funnelpilot"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "funnelpilot":
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from funnelpilot import tokens
    return names


def test_layer_package_holds_only_modules_the_handlers_reach():
    package = ROOT / "layers/funnelpilot/funnelpilot"
    # every module, subpackages' included (funnelpilot.audience.lookup: a package is its __init__.py)
    files = {".".join(("funnelpilot", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    modules = set(files) - {"funnelpilot"}
    reached, todo = set(), [n for app in (ROOT / "functions").glob("*/app.py") for n in _imported_layer_modules(app)]
    while todo:
        name = todo.pop()
        if name in modules and name not in reached:
            reached.add(name)
            todo += _imported_layer_modules(files[name])
            if "." in name.removeprefix("funnelpilot."):  # importing a submodule runs its package's __init__
                todo.append(name.rsplit(".", 1)[0])
    assert modules - reached == set(), "not imported by any handler: move to layers/local (never deployed)"

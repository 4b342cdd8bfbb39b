"""Reading template.yaml as the local runtime's single source of truth.

A YAML loader that understands CloudFormation's short tags, SAM Globals merged into
each function, and a resolver for the intrinsic functions the template uses (Ref,
Fn::Sub, Fn::GetAtt, Fn::If, Fn::Equals, Fn::Not, Fn::Join, Fn::Select, Fn::Split).
"""
import copy
import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ACCOUNT = "123456789012"
REGION = "us-east-1"
NO_VALUE = object()
# The values the local runtime gives the parameters a deploy must supply (no Default in
# template.yaml: CloudFormation refuses a stack without them), and a site's redirect hosts
# (none by default on AWS). A NoEcho parameter without a Default (a key) is ``local-<Name>``
# instead (make serve prints it).
LOCAL_VALUES = {
    "SenderEmail": "hello@example.com",
    "FromName": "Ada at Example",
    "PostalAddress": "Example Ltd, 1 Main Street, Springfield, OR 97477, USA",
    "SalesEmail": "sales@example.com",
    "SiteUrl": "https://example.com",
    "CorsOrigins": "http://127.0.0.1:3000,http://localhost:3000",
    "AllowedRedirectHosts": "example.com,www.example.com",
}


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: every runtime start reads the template
    pass


def _tag(name: str):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}
    return construct


for _short in ("Ref", "Sub", "GetAtt", "If", "Equals", "Not", "And", "Or", "Join", "Select",
               "Split", "FindInMap", "Base64", "ImportValue", "Condition", "GetAZs"):
    _Loader.add_constructor(f"!{_short}", _tag(_short if _short in ("Ref", "Condition") else f"Fn::{_short}"))


_parsed: dict[str, bytes] = {}  # sha256 of a file -> its document, pickled: load_yaml


def load_yaml(path: Path) -> dict:
    """The file's document, a new copy each time (parsed once per process for the same content:
    every runtime start reads template.yaml, ~50 ms to parse, ~1 ms to unpickle)."""
    text = Path(path).read_bytes()
    key = hashlib.sha256(text).hexdigest()
    if key not in _parsed:
        _parsed[key] = pickle.dumps(yaml.load(text, Loader=_Loader))
    return pickle.loads(_parsed[key])


def _merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def _check_parameter(name: str, value: str, spec: dict) -> None:
    """Refuse a parameter value as CloudFormation does (AllowedValues, AllowedPattern, lengths)."""
    allowed = spec.get("AllowedValues")
    pattern = spec.get("AllowedPattern")
    if (allowed is not None and value not in [str(a) for a in allowed]) or (
            pattern is not None and not re.fullmatch(pattern, value)) or not (
            int(spec.get("MinLength", 0)) <= len(value) <= int(spec.get("MaxLength", 4096))):
        raise ValueError(f"template.yaml: parameter {name}={value!r}: "
                         f"{spec.get('ConstraintDescription') or allowed or pattern or 'bad length'}")


def local_value(name: str, spec: dict) -> str:
    """The local stand-in for a parameter without a Default (one a deploy must be given)."""
    if spec.get("NoEcho"):
        return f"local-{name}"
    if name not in LOCAL_VALUES:
        raise ValueError(f"template.yaml: parameter {name} has no Default, so a deploy must pass it (CloudFormation: "
                         f"'Parameters: [{name}] must have values'); give the local runtime a value for it in "
                         "funnelpilot_local.template.LOCAL_VALUES")
    return LOCAL_VALUES[name]


@dataclass
class Template:
    root: Path
    doc: dict
    parameters: dict[str, str] = field(default_factory=dict)
    physical: dict[str, str] = field(default_factory=dict)  # logical id -> Ref value
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)
    stack_name: str = "funnelpilot"  # AWS::StackName: the stack-scoped physical names derive from it

    @classmethod
    def load(cls, root: Path, overrides: dict[str, str] | None = None, *, stack_name: str = "funnelpilot",
             path: Path | None = None) -> "Template":
        """``root/template.yaml``, or the template file ``path`` (CodeUri and the other paths in
        it stay relative to ``root``)."""
        doc = load_yaml(path or root / "template.yaml")
        specs = doc.get("Parameters", {})
        unknown = set(overrides or {}) - set(specs)
        if unknown:
            raise KeyError(f"template.yaml: no such parameter: {', '.join(sorted(unknown))}")
        params = {k: LOCAL_VALUES.get(k, str(v["Default"])) if "Default" in v else local_value(k, v)
                  for k, v in specs.items() if "Default" in v or k not in (overrides or {})}
        params.update(overrides or {})
        for name, value in (overrides or {}).items():
            _check_parameter(name, str(value), doc["Parameters"][name])
        return cls(root=root, doc=doc, parameters=params, stack_name=stack_name)

    @property
    def resources(self) -> dict[str, dict]:
        return self.doc["Resources"]

    def of_type(self, type_name: str) -> dict[str, dict]:
        """Resources of a type, leaving out those whose ``Condition`` is false."""
        return {k: v for k, v in self.resources.items()
                if v["Type"] == type_name and ("Condition" not in v or self.condition(v["Condition"]))}

    def properties(self, logical_id: str) -> dict:
        """The resource's properties, SAM Globals merged in for functions."""
        res = self.resources[logical_id]
        props = copy.deepcopy(res.get("Properties", {}))
        if res["Type"] == "AWS::Serverless::Function":
            props = _merge(copy.deepcopy(self.doc.get("Globals", {}).get("Function", {})), props)
        return props

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.doc["Conditions"][name]))

    def resolve(self, value):
        if isinstance(value, list):
            return [r for v in value if (r := self.resolve(v)) is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*arg)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return a == b
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return self.resolve(text).split(sep)
        return {k: r for k, v in value.items() if (r := self.resolve(v)) is not NO_VALUE}

    def ref(self, name: str):
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::StackName": self.stack_name,
                  "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": NO_VALUE}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]
        raise KeyError(f"template.yaml: !Ref {name}: no such parameter or resource (or not created yet)")

    def get_att(self, logical_id: str, attribute: str):
        try:
            return self.attributes[(logical_id, attribute)]
        except KeyError:
            raise KeyError(f"template.yaml: !GetAtt {logical_id}.{attribute} is not supported locally") from None

    def sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

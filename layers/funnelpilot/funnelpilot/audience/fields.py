"""Custom contact fields, declared in ``infra/fields.yaml`` (name, type, required, allowed values).

Signup, the CSV import, ``contacts set``, bulk ``--set`` and templates use them: values are checked and converted here, and
stored in the contact's ``properties`` map. A field that is not declared is refused
(``InvalidField`` naming it: a 400 on signup, an error line on import) unless the file says
``undeclared: keep``; it is never silently dropped.
"""
import re
from datetime import date
from functools import cache

import yaml

from funnelpilot.config import config
from funnelpilot.errors import InvalidField

TYPES = ("string", "number", "boolean", "date", "choice")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


@cache
def _doc() -> dict:
    path = config().content_dir / "fields.yaml"
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    for name, spec in (doc.get("fields") or {}).items():
        if not _NAME.match(name) or (spec or {}).get("type", "string") not in TYPES:
            raise ValueError(f"fields.yaml: field {name!r}: lower_snake_case name and a type among {', '.join(TYPES)}")
        if (spec or {}).get("type") == "choice" and not (spec or {}).get("allowed"):
            raise ValueError(f"fields.yaml: field {name!r} is a choice: list its `allowed` values")
    if doc.get("undeclared", "reject") not in ("reject", "keep"):
        raise ValueError("fields.yaml: `undeclared` is reject or keep")
    return doc


def declared() -> dict[str, dict]:
    """Declared fields by name: ``{"type", "required", "allowed", "max_length"}``."""
    return {name: {"type": "string", "required": False, "max_length": 200, **(spec or {})}
            for name, spec in (_doc().get("fields") or {}).items()}


def keep_undeclared() -> bool:
    return _doc().get("undeclared", "reject") == "keep"


def consent_wordings() -> dict[str, str]:
    return {str(k): v for k, v in (_doc().get("consent_wordings") or {}).items()}


def check_consent_version(version: str | None) -> str | None:
    """The consent wording version a form showed: one declared in ``consent_wordings``."""
    if version is None:
        return None
    if version not in (known := consent_wordings()):
        raise InvalidField("consent_version", f"unknown consent wording version {version[:32]!r} "
                                              f"(declared: {', '.join(known) or 'none'})")
    return version


def convert(name: str, raw) -> str | int | float | bool | None:
    """``raw`` (a form's or CSV cell's text, or a JSON value) as the declared field's value; None
    for an empty one. Raises ``InvalidField(name, ...)`` for a value of the wrong type."""
    spec = declared().get(name)
    if spec is None:
        if not keep_undeclared():
            raise InvalidField(name, f"unknown field {name[:64]!r}: declare it in infra/fields.yaml "
                                     f"(declared: {', '.join(declared()) or 'none'})")
        spec = {"type": "string", "max_length": 200}
        if not _NAME.match(name):
            raise InvalidField(name, "an undeclared field kept must have a lower_snake_case name")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    kind = spec["type"]
    if isinstance(raw, bool) and kind == "boolean":
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and kind == "number":
        return raw
    if not isinstance(raw, str):
        raise InvalidField(name, f"{name} must be a {kind}")
    text = raw.strip()
    if any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in text):
        raise InvalidField(name, f"{name} contains control characters")
    if kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise InvalidField(name, f"{name} must be a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidField(name, f"{name} must be a number")
        return int(value) if value.is_integer() else value
    if kind == "boolean":
        return boolean(name, text)
    if kind == "date":
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise InvalidField(name, f"{name} must be a date, YYYY-MM-DD") from None
    if kind == "choice":
        allowed = [str(a) for a in spec["allowed"]]
        if text not in allowed:
            raise InvalidField(name, f"{name} must be one of {', '.join(allowed)}")
        return text
    if len(text) > int(spec["max_length"]):
        raise InvalidField(name, f"{name} is longer than {spec['max_length']} characters")
    return text


def boolean(name: str, text: str) -> bool:
    """true/yes/1/on or false/no/0/off (any case), else ``InvalidField(name)``."""
    if text.strip().lower() in _TRUE | _FALSE:
        return text.strip().lower() in _TRUE
    raise InvalidField(name, f"{name} must be true or false")


def parse(values: dict) -> dict:
    """Custom field values (name -> raw) checked and converted, the empty ones left out; every
    required field must be there. Raises the first problem (``checked`` gives them all)."""
    out, problems = checked(values)
    if problems:
        raise problems[0]
    return out


def checked(values: dict) -> tuple[dict, list[InvalidField]]:
    """(the values converted, empty ones left out; every problem, one ``InvalidField`` per field)."""
    out, problems = {}, []
    for name, raw in values.items():
        try:
            if (value := convert(name, raw)) is not None:
                out[name] = value
        except InvalidField as exc:
            problems.append(exc)
    problems += [InvalidField(name, f"{name} is required") for name, spec in declared().items()
                 if spec["required"] and name not in out and all(p.field != name for p in problems)]
    return out, problems


def to_set(values, name: str = "properties") -> dict:
    """Fields to set on contacts (``contacts set``, bulk ``--set``), each checked and converted as
    declared (``InvalidField`` naming an undeclared, ill-typed or empty one; ``name``: the argument)."""
    if not isinstance(values, dict) or not values:
        raise InvalidField(name, f"{name} must be an object of fields and values")
    out = {field: convert(field, raw) for field, raw in values.items()}
    if empty := [field for field, value in out.items() if value is None]:
        raise InvalidField(empty[0], f"{empty[0]}: give a value")
    return out


def attribute(value) -> dict:
    """A field's value as a DynamoDB attribute value."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    return {"S": value}


def template_values(properties: dict) -> dict:
    """What templates see as ``fields``: every declared field, None where the contact has none."""
    return {name: properties.get(name) for name in declared()}

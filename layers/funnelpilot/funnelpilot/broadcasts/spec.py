"""A broadcast's spec (JSON or YAML, README "Broadcasts"): checked field by field, so bad input is an
``InvalidField`` naming the field before anything is stored.

``name`` (a slug: the broadcast's id), ``subject`` (jinja, like the content) or ``ab`` (``subjects``:
variant -> subject, ``sample_percent``, ``wait_hours``, ``metric``: clicks or opens), ``preheader``,
``content`` (``html`` and ``text``: jinja extending ``layout.html.j2`` / ``layout.txt.j2``), ``list``
(the list the email belongs to: footer, List-Id, the unsubscribe link's list), ``audience``
(``segments``, ``lists``, ``exclude_segments``, ``exclude_lists``), ``frequency_cap`` (skip, defer,
ignore) and ``priority`` (broadcast, funnel).
"""
import re

from funnelpilot import consent, segments
from funnelpilot.errors import InvalidField

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VARIANT = re.compile(r"^[a-z0-9]{1,16}$")
FIELDS = ("name", "subject", "ab", "preheader", "content", "list", "audience", "frequency_cap", "priority")
AUDIENCE = ("segments", "lists", "exclude_segments", "exclude_lists")
CAPS = ("skip", "defer", "ignore")
PRIORITIES = ("broadcast", "funnel")
METRICS = ("clicks", "opens")
MAX_CONTENT = 100_000  # characters of each part (the item's 400 KB holds both, the spec and the rest)


def _text(spec: dict, field: str, *, required: bool = True, limit: int = 998) -> str | None:
    value = spec.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, f"{field}: a non-empty string")
    if len(value) > limit:
        raise InvalidField(field, f"{field}: at most {limit} characters")
    return value


def _names(audience: dict, field: str) -> list[str]:
    value = audience.get(field) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidField(f"audience.{field}", f"audience.{field}: a list of names")
    return list(dict.fromkeys(value))


def _ab(value) -> dict:
    if not isinstance(value, dict) or set(value) - {"subjects", "sample_percent", "wait_hours", "metric"}:
        raise InvalidField("ab", "ab: {subjects: {a: ..., b: ...}, sample_percent, wait_hours, metric}")
    subjects = value.get("subjects")
    if not isinstance(subjects, dict) or len(subjects) < 2:
        raise InvalidField("ab.subjects", "ab.subjects: two or more variants, name -> subject")
    for name, subject in subjects.items():
        if not VARIANT.match(str(name)):
            raise InvalidField("ab.subjects", f"ab.subjects: variant {str(name)[:20]!r} is not a-z0-9 (16 at most)")
        if not isinstance(subject, str) or not subject.strip():
            raise InvalidField("ab.subjects", f"ab.subjects.{name}: a non-empty subject")
    percent, hours = value.get("sample_percent", 20), value.get("wait_hours", 4)
    if not isinstance(percent, int) or isinstance(percent, bool) or not 2 <= percent <= 50:
        raise InvalidField("ab.sample_percent", "ab.sample_percent: a whole number from 2 to 50")
    if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not 1 <= hours <= 72:
        raise InvalidField("ab.wait_hours", "ab.wait_hours: hours from 1 to 72")
    metric = value.get("metric", "clicks")
    if metric not in METRICS:
        raise InvalidField("ab.metric", f"ab.metric: one of {', '.join(METRICS)}")
    return {"subjects": {str(k): v for k, v in subjects.items()}, "sample_percent": percent, "wait_hours": hours,
            "metric": metric}


def validate(spec) -> dict:
    """The spec, normalised (defaults filled in); ``InvalidField`` for the first bad field. The
    content is checked by rendering it (``content.check``), which needs the rest to be valid."""
    if not isinstance(spec, dict):
        raise InvalidField("spec", "a broadcast spec is a mapping (JSON object / YAML document)")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise InvalidField(unknown[0], f"unknown field {unknown[0][:40]!r} (fields: {', '.join(FIELDS)})")
    name = spec.get("name")
    if not isinstance(name, str) or not SLUG.match(name):
        raise InvalidField("name", "name: a slug (a-z, 0-9 and -, at most 63 characters): the broadcast's id")
    out = {"name": name}
    if ("subject" in spec) == ("ab" in spec):
        raise InvalidField("subject", "subject: give a subject, or ab.subjects for an A/B test, not both")
    if "ab" in spec:
        out["ab"] = _ab(spec["ab"])
    else:
        out["subject"] = _text(spec, "subject")
    preheader = _text(spec, "preheader", required=False, limit=300)
    if preheader is not None:
        out["preheader"] = preheader
    content = spec.get("content")
    if not isinstance(content, dict) or set(content) != {"html", "text"}:
        raise InvalidField("content", "content: {html: ..., text: ...} (jinja extending layout.html.j2 / layout.txt.j2)")
    for part in ("html", "text"):
        if not isinstance(content[part], str) or not content[part].strip():
            raise InvalidField("content", f"content.{part}: a non-empty template")
        if len(content[part]) > MAX_CONTENT:
            raise InvalidField("content", f"content.{part}: at most {MAX_CONTENT} characters")
    out["content"] = {"html": content["html"], "text": content["text"]}
    list_name = spec.get("list")
    if not isinstance(list_name, str):
        raise InvalidField("list", "list: the declared list (infra/lists.yaml) the broadcast belongs to")
    consent.require_list(list_name)
    out["list"] = list_name
    audience = spec.get("audience")
    if not isinstance(audience, dict) or set(audience) - set(AUDIENCE):
        raise InvalidField("audience", f"audience: a mapping of {', '.join(AUDIENCE)}")
    out["audience"] = {field: _names(audience, field) for field in AUDIENCE}
    if not out["audience"]["segments"] and not out["audience"]["lists"]:
        raise InvalidField("audience", "audience: name at least one segment or list")
    known = segments.definitions()
    for field in ("segments", "exclude_segments"):
        for segment in out["audience"][field]:
            if segment not in known or segment.startswith(segments.list_segment("")):
                raise InvalidField(f"audience.{field}", f"audience.{field}: unknown segment {segment[:64]!r}")
    for field in ("lists", "exclude_lists"):
        for name in out["audience"][field]:
            if name not in consent.declared_lists():
                raise InvalidField(f"audience.{field}", f"audience.{field}: unknown list {name[:64]!r}")
    for field, allowed, default in (("frequency_cap", CAPS, "skip"), ("priority", PRIORITIES, "broadcast")):
        value = spec.get(field, default)
        if value not in allowed:
            raise InvalidField(field, f"{field}: one of {', '.join(allowed)}")
        out[field] = value
    return out


def included(spec: dict) -> list[str]:
    """The segments the audience is read from, in order (each list is its segment ``list:<name>``)."""
    audience = spec["audience"]
    return audience["segments"] + [segments.list_segment(n) for n in audience["lists"]]


def excluded(spec: dict) -> set[str]:
    """The segments whose members get no email (checked on the profile's ``segments``)."""
    audience = spec["audience"]
    return set(audience["exclude_segments"]) | {segments.list_segment(n) for n in audience["exclude_lists"]}


def variants(spec: dict) -> list[str]:
    """The A/B variants (none without a test)."""
    return sorted(spec["ab"]["subjects"]) if "ab" in spec else []

"""Funnel files (``infra/funnels/<id>.yaml``): loading and validation.

A funnel file is what a marketer edits; the compiler (funnelpilot_local.compiler) turns it into
a state machine. Every mistake is reported as ``<file>:<line>: <what is wrong>``, all of
them at once, before anything is generated. The language is documented in README.md
("Funnels") and by the shipped files themselves.
"""
import difflib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from funnelpilot.config import config

ENTRY_RULES = ("once_per_contact", "once_per_trigger", "always")
# What a hand-off (``goto``, ``funnel.handoff``) does about ``reenter_after``: ``enter`` overrides it (the
# person was sent here on purpose), ``respect_reentry`` refuses within it (funnelpilot.funnels.handoff).
HANDOFF_MODES = ("enter", "respect_reentry")
# The event catalogue (ARCHITECTURE.md §4) plus the events funnelpilot adds; ``custom.*`` are the site's own.
EVENTS = frozenset("""contact.subscribed contact.confirmed contact.pending contact.unsubscribed contact.suppressed
contact.erased contact.updated contact.tagged contact.untagged contact.inactive email.sent email.blocked
email.opened email.clicked email.bounced email.complained page.viewed order.placed
lead.qualified customer.vip customer.repurchase_due customer.lapsed segment.entered segment.left
funnel.converted funnel.handoff funnel.refused contact.sunset contact.reactivated sales.notify""".split())
# Counted where they happen, never put on the bus (an event per email would cost more than it tells).
NOT_PUBLISHED = {"email.delivered": "deliveries are counted in the reports, not published as events "
                                    "(use email.opened, email.clicked or email.bounced)"}


def unknown_event(value, known: frozenset = EVENTS) -> str | None:
    """Why ``value`` is not an event one can wait for or subscribe to (None: it is one)."""
    if isinstance(value, str) and (value in known or value.startswith("custom.")):
        return None
    if value in NOT_PUBLISHED:
        return f"{value!r}: {NOT_PUBLISHED[value]}"
    close = difflib.get_close_matches(str(value), sorted(known), n=1)
    return f"unknown event {value!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                          " (see the event catalogue, or custom.<name>)")
ACTIONS = ("send", "sms", "wait", "wait_for", "if", "split", "tag", "untag", "set", "score", "notify", "webhook", "goto",
           "exit", "suppress", "sunset")
_EXTRA_KEYS = {"send": {"transactional"}, "sms": {"segments"}, "if": {"then", "else"}, "wait_for": {"timeout", "then", "else"},
               "split": {"winner"}}
# Conditions of ``if``: engagement with this funnel's emails, plus every segment condition.
ENGAGEMENT = ("clicked", "opened")
PROFILE_CONDITIONS = ("segment", "tag", "not_tag", "list", "lead_magnet", "property", "status", "score", "loyalty",
                      "customer", "last_activity_days", "did")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400, "w": 604800, "week": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_ID = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class FunnelError(ValueError):
    """One or more problems in funnel files, one ``file:line: message`` per line."""


class _Lined(dict):
    line = 0


class _Loader(yaml.SafeLoader):
    """Keeps the line of every mapping, for error messages."""


def _mapping(loader: _Loader, node) -> _Lined:
    loader.flatten_mapping(node)
    value = _Lined(loader.construct_pairs(node, deep=True))
    value.line = node.start_mark.line + 1
    return value


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass(frozen=True)
class Step:
    kind: str  # one of ACTIONS
    arg: object  # the value under the kind's key, normalised (seconds for wait, dict for conditions)
    line: int
    name: str | None = None  # the marketer's own state name
    transactional: bool = False
    segments: int = 1  # sms: the most segments its text may take
    timeout: float | None = None  # wait_for, seconds
    then: tuple["Step", ...] = ()
    otherwise: tuple["Step", ...] = ()
    branches: tuple[tuple[str, int, tuple["Step", ...]], ...] = ()  # split: (variant, weight, steps)
    winner: dict | None = None  # split: {"min_sends", "metric", "p"} - new entrants get a significant winner


@dataclass(frozen=True)
class Funnel:
    id: str
    path: Path | None = None
    name: str = ""
    description: str = ""
    trigger: dict | None = None  # {"event": detail-type, "where": detail pattern}
    entry_rule: str = "once_per_trigger"
    reenter_after: float = 0.0
    handoff: str = "enter"  # one of HANDOFF_MODES
    goals: tuple[str, ...] = ()
    exits: tuple[str, ...] = ()
    frequency_cap: tuple[int, float] = (1, 24.0)  # marketing emails per contact, per hours (every funnel)
    defer_up_to: float = 72.0  # hours a capped email waits for the contact's next free slot, then it is skipped
    quiet_hours: tuple[str, str] | None = None
    quiet_spread: int = 60  # minutes over which the sends at the end of quiet hours spread (per contact)
    timezone: str = "UTC"
    steps: tuple[Step, ...] = field(default=())
    list_name: str | None = None  # the list its emails belong to (lists.yaml); None: the list its trigger named
    status: str = "live"  # or "draining": takes nobody in, people inside finish (README "Changing a live funnel")
    utm: dict | bool | None = None  # its links' UTM tags (funnelpilot.steering.utm): overrides, or False: none

    def sends(self, kind: str = "send") -> dict[str, list[Step]]:
        """template -> the steps of ``kind`` (send: emails, sms: texts) that send it (anywhere in the funnel)."""
        found: dict[str, list[Step]] = {}
        for step in walk(self.steps):
            if step.kind == kind:
                found.setdefault(step.arg, []).append(step)
        return found


def walk(steps: tuple[Step, ...]):
    for step in steps:
        yield step
        yield from walk(step.then)
        yield from walk(step.otherwise)
        for _, _, branch in step.branches:
            yield from walk(branch)


def seconds(text, unit_default: str | None = None) -> float:
    """'2 days', '36h', '90 minutes' -> seconds. Raises ValueError with the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and unit_default:
        return float(text) * _UNITS[unit_default]
    m = _DURATION.match(str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"{text!r} is not a duration (write e.g. '2 days', '36 hours', '90 minutes', '1 week')")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Checker:
    def __init__(self, path: Path, templates: bool = True):
        self.path, self.errors, self.templates = path, [], templates
        self.named_emails: set[str] = set()  # every `send:` value, even a broken one (no cascade of errors)

    def error(self, line: int, message: str) -> None:
        self.errors.append(f"{self.path}:{line}: {message}")

    def keys(self, node: dict, allowed: set[str], line: int, what: str) -> None:
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
                self.error(line, f"{what}: unknown key {key!r}{hint}")

    def event(self, value, line: int, what: str) -> str | None:
        problem = unknown_event(value)
        if problem:
            self.error(line, f"{what}: {problem}")
            return None
        return value

    def steps(self, node, line: int, where: str) -> tuple[Step, ...]:
        if not isinstance(node, list) or not node:
            self.error(line, f"{where or 'steps'}: expected a non-empty list of steps")
            return ()
        out = []
        for i, raw in enumerate(node, 1):
            step = self.step(raw, line, f"{where} step {i}".strip())
            if step is not None:
                out.append(step)
        return tuple(out)

    def step(self, raw, parent_line: int, where: str) -> Step | None:
        line = getattr(raw, "line", parent_line)
        if isinstance(raw, str) and raw in ("exit", "sunset"):
            return Step(raw, None, line)
        if not isinstance(raw, dict):
            self.error(line, f"{where}: a step is a mapping such as `send: welcome-1` or `wait: 2 days`")
            return None
        kinds = [k for k in raw if k in ACTIONS]
        if len(kinds) != 1:
            found = f"found {', '.join(map(str, kinds))}" if kinds else f"found keys {', '.join(map(str, raw))}"
            self.error(line, f"{where}: a step has exactly one of {', '.join(ACTIONS)} ({found})")
            return None
        kind = kinds[0]
        where = f"{where} ({kind})"
        self.keys(raw, {kind, "name"} | _EXTRA_KEYS.get(kind, set()), line, where)
        name = raw.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 70):
            self.error(line, f"{where}: name must be a text of at most 70 characters")
            name = None
        value = raw[kind]
        build = getattr(self, f"_{kind}")
        try:
            return build(value, raw, line, where, name)
        except ValueError as exc:
            self.error(line, f"{where}: {exc}")
            return None

    # ---------------------------------------------------------------- one method per step kind
    def _send(self, value, raw, line, where, name):
        if not isinstance(value, str) or not _TEMPLATE.match(value):
            raise ValueError("send names an email template, e.g. `send: welcome-1`")
        self.named_emails.add(value)
        emails = self.path.parent.parent / "emails"  # <content>/funnels/x.yaml -> <content>/emails
        missing = [f"{value}.{ext}.j2" for ext in ("html", "txt")
                   if self.templates and not (emails / f"{value}.{ext}.j2").exists()]
        if missing:
            raise ValueError(f"email template {value!r} not found (missing {', '.join(missing)} in {emails})")
        transactional = raw.get("transactional", False)
        if not isinstance(transactional, bool):
            raise ValueError("transactional is true or false")
        return Step("send", value, line, name, transactional=transactional)

    def _sms(self, value, raw, line, where, name):
        """A text in <content>/sms/, checked with the longest values it may meet: at most ``segments``
        (default 1) segments of 160 GSM-7 / 70 UCS-2 characters, and it says how to opt out (STOP)."""
        from funnelpilot.channels import sms  # it loads funnels at run time

        if not isinstance(value, str) or not _TEMPLATE.match(value):
            raise ValueError("sms names a text template, e.g. `sms: engagement-call`")
        content = self.path.parent.parent
        path = content / "sms" / f"{value}.txt.j2"
        if not path.exists():
            raise ValueError(f"SMS template {value!r} not found (missing {path.name} in {path.parent})")
        allowed = raw.get("segments", sms.MAX_SEGMENTS)
        if not isinstance(allowed, int) or isinstance(allowed, bool) or not 1 <= allowed <= 10:
            raise ValueError("segments is a whole number from 1 to 10")
        size = sms.longest(value, content)
        if size["segments"] > allowed:
            single, part = sms.SEGMENT[size["encoding"]]
            raise ValueError(f"SMS {value!r} is {size['units']} {size['encoding']} characters at its longest: "
                             f"{size['segments']} segments (one holds {single}, each of a longer text {part}); "
                             f"shorten it or allow `segments: {size['segments']}`")
        if "stop" not in path.read_text().lower():
            raise ValueError(f"SMS {value!r} must say how to opt out, e.g. 'Reply STOP to opt out'")
        return Step("sms", value, line, name, segments=allowed)

    def _wait(self, value, raw, line, where, name):
        if isinstance(value, dict):
            self.keys(value, {"until"}, line, where)
            until = value.get("until")
            if not isinstance(until, str) or not _TIME.match(until):
                raise ValueError("`wait: {until: \"09:00\"}` takes a local time of day HH:MM (24 h)")
            return Step("wait", {"until": until}, line, name)
        duration = seconds(value)
        if duration <= 0 or duration > 365 * 86400:
            raise ValueError("a wait lasts between 1 second and 1 year")
        return Step("wait", duration, line, name)

    def _wait_for(self, value, raw, line, where, name):
        if not isinstance(value, dict):
            raise ValueError("wait_for takes `clicked: {email, link}`, `opened: <email>` or `event: <type>`")
        if "event" in value:
            self.keys(value, {"event", "where"}, line, where)
            event = self.event(value["event"], line, where)
            where_ = value.get("where") or {}
            if not isinstance(where_, dict):
                raise ValueError("where is a mapping of detail fields to values")
            condition = {"event": event, "where": dict(where_)}
        else:
            condition = self.engagement(value, line, where)
        if "timeout" not in raw:
            raise ValueError("wait_for needs a timeout, e.g. `timeout: 2 days`")
        timeout = seconds(raw["timeout"])
        if timeout <= 0 or timeout > 364 * 86400:
            raise ValueError("timeout must be between 1 second and 364 days (Step Functions' limit is one year)")
        then = self.steps(raw["then"], line, f"{where} then") if "then" in raw else ()
        otherwise = self.steps(raw["else"], line, f"{where} else") if "else" in raw else ()
        return Step("wait_for", condition, line, name, timeout=timeout, then=then, otherwise=otherwise)

    def engagement(self, value: dict, line: int, where: str) -> dict:
        kinds = [k for k in value if k in ENGAGEMENT]
        if len(kinds) != 1 or len(value) != 1:
            raise ValueError("expected one of `clicked: {email: <template>, link: <text in the URL>}` or "
                             "`opened: <template>`")
        kind = kinds[0]
        arg = value[kind]
        if isinstance(arg, str):
            arg = {"email": arg}
        if not isinstance(arg, dict) or not isinstance(arg.get("email"), str):
            raise ValueError(f"{kind} names the email: `{kind}: {{email: welcome-1}}`")
        self.keys(arg, {"email", "link"} if kind == "clicked" else {"email"}, line, where)
        if "link" in arg and (not isinstance(arg["link"], str) or not arg["link"]):
            raise ValueError("link is a piece of the link's URL, e.g. `link: /pricing`")
        return {kind: {"email": arg["email"], "link": arg.get("link")}}

    def score_condition(self, kind: str, arg) -> dict:
        """``{gte: 40}`` (gte, gt, lte, lt), a number or ``threshold``: the track's threshold in scoring.yaml."""
        if not isinstance(arg, dict) or not arg or set(arg) - {"gte", "gt", "lte", "lt"}:
            raise ValueError(f"{kind} takes comparisons: `{kind}: {{gte: 40}}` or `{kind}: {{gte: threshold}}`")
        for value in arg.values():
            if value == "threshold":
                track = "capture" if kind == "score" else "loyalty"
                scoring = self.path.parent.parent / "scoring.yaml"
                tracks = (yaml.safe_load(scoring.read_text()) or {}).get("tracks") or {} if scoring.exists() else {}
                if (tracks.get(track) or {}).get("threshold") is None:
                    raise ValueError(f"{kind}: threshold: the {track} track has no threshold in scoring.yaml")
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{kind}: compare with a number or `threshold`, not {value!r}")
        return dict(arg)

    def _if(self, value, raw, line, where, name):
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError("if takes one condition, e.g. `if: {clicked: {email: welcome-1}}` or `if: {tag: vip}`")
        kind = next(iter(value))
        if kind in ENGAGEMENT:
            condition = self.engagement(value, line, where)
        elif kind in ("score", "loyalty"):
            condition = {kind: self.score_condition(kind, value[kind])}
        elif kind in PROFILE_CONDITIONS:
            condition = {kind: value[kind]}
        else:
            close = difflib.get_close_matches(str(kind), [*ENGAGEMENT, *PROFILE_CONDITIONS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown condition {kind!r}{hint}; conditions: "
                             f"{', '.join((*ENGAGEMENT, *PROFILE_CONDITIONS))}")
        if "then" not in raw and "else" not in raw:
            raise ValueError("if needs `then:` and/or `else:` steps")
        then = self.steps(raw["then"], line, f"{where} then") if "then" in raw else ()
        otherwise = self.steps(raw["else"], line, f"{where} else") if "else" in raw else ()
        return Step("if", condition, line, name, then=then, otherwise=otherwise)

    def _split(self, value, raw, line, where, name):
        if not isinstance(value, dict) or len(value) < 2:
            raise ValueError("split takes two or more variants: `split: {a: {weight: 50, steps: [...]}, b: ...}`")
        branches = []
        for variant, spec in value.items():
            vline = getattr(spec, "line", line)
            if not isinstance(variant, str) or not re.match(r"^[a-z0-9][a-z0-9_-]{0,19}$", variant):
                self.error(vline, f"{where}: variant name {variant!r}: lowercase letters, digits, - and _")
                continue
            if not isinstance(spec, dict):
                self.error(vline, f"{where} variant {variant}: expected `{{weight: 50, steps: [...]}}`")
                continue
            self.keys(spec, {"weight", "steps"}, vline, f"{where} variant {variant}")
            weight = spec.get("weight")
            if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 100:
                self.error(vline, f"{where} variant {variant}: weight is a whole number from 1 to 100")
                continue
            branches.append((variant, weight, self.steps(spec.get("steps"), vline, f"{where} variant {variant}")))
        return Step("split", None, line, name, branches=tuple(branches), winner=self.winner(raw.get("winner")))

    def winner(self, value) -> dict | None:
        """``winner: {min_sends: 100, metric: clicks, p: 0.05}`` of a split (funnelpilot.steering.abtest)."""
        if value is None:
            return None
        if value is True:
            value = {}
        if not isinstance(value, dict) or set(value) - {"min_sends", "metric", "p"}:
            raise ValueError("winner: `{min_sends: 100, metric: clicks, p: 0.05}` (metric: clicks or conversions)")
        out = {"min_sends": value.get("min_sends", 100), "metric": value.get("metric", "clicks"), "p": value.get("p", 0.05)}
        if not isinstance(out["min_sends"], int) or isinstance(out["min_sends"], bool) or out["min_sends"] < 10:
            raise ValueError("winner.min_sends: the sends each variant needs first, a whole number of 10 or more")
        if out["metric"] not in ("clicks", "conversions"):
            raise ValueError("winner.metric: clicks (human clicks per email delivered) or conversions")
        if not isinstance(out["p"], float) or not 0 < out["p"] <= 0.1:
            raise ValueError("winner.p: the significance level, above 0 and at most 0.1 (e.g. 0.05)")
        return out

    def _tag(self, value, raw, line, where, name):
        if not isinstance(value, str) or not re.match(r"^[a-z0-9][a-z0-9_:-]{0,49}$", value):
            raise ValueError("a tag is lowercase letters, digits, -, _ and : (at most 50)")
        return Step("tag" if "tag" in raw else "untag", value, line, name)

    _untag = _tag

    def _set(self, value, raw, line, where, name):
        if not isinstance(value, dict) or not value:
            raise ValueError("set takes properties: `set: {interest: seo}`")
        for key, val in value.items():
            if not isinstance(key, str) or not re.match(r"^[a-z][a-z0-9_]{0,39}$", key):
                raise ValueError(f"property name {key!r}: lowercase letters, digits and _")
            if not isinstance(val, (str, int, float, bool)) or isinstance(val, str) and len(val) > 200:
                raise ValueError(f"property {key}: a literal text (<= 200 chars), number or true/false")
        return Step("set", dict(value), line, name)

    def _score(self, value, raw, line, where, name):
        track = "capture"
        if isinstance(value, dict):
            self.keys(value, {"points", "track"}, line, where)
            track = value.get("track", "capture")
            value = value.get("points")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1000 <= value <= 1000:
            raise ValueError("score adds points between -1000 and 1000: `score: 10`")
        if track not in ("capture", "loyalty"):
            raise ValueError("track is capture or loyalty")
        return Step("score", {"points": value, "track": track}, line, name)

    def _notify(self, value, raw, line, where, name):
        if not isinstance(value, str) or not value.strip() or len(value) > 120:
            raise ValueError("notify takes the reason sales read: `notify: clicked the pricing link`")
        return Step("notify", value.strip(), line, name)

    def _webhook(self, value, raw, line, where, name):
        """``webhook: crm`` or ``webhook: {to: crm, fields: [email], data: {stage: hot}}``: a delivery to a
        subscription of webhooks.yaml (beside the funnels' folder), with at most its fields."""
        from funnelpilot.channels import webhooks

        spec = {"to": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or not isinstance(spec.get("to"), str):
            raise ValueError("webhook names a subscription of webhooks.yaml: `webhook: crm`, or "
                             "`webhook: {to: crm, fields: [email], data: {stage: hot}}`")
        self.keys(spec, {"to", "fields", "data"}, line, where)
        try:
            subscriptions = webhooks.load(self.path.parent.parent / "webhooks.yaml")
        except webhooks.WebhookError as exc:
            raise ValueError(f"webhooks.yaml has errors:\n{exc}") from None
        sub = subscriptions.get(spec["to"])
        if sub is None:
            raise ValueError(f"no subscription {spec['to']!r} in webhooks.yaml "
                             f"(subscriptions: {', '.join(sorted(subscriptions)) or 'none'})")
        fields = spec.get("fields", list(sub.fields))
        if not isinstance(fields, list) or not set(fields) <= set(sub.fields):
            raise ValueError(f"fields: a list among the subscription's own ({', '.join(sub.fields) or 'none'})")
        data = spec.get("data") or {}
        if not isinstance(data, dict) or not all(isinstance(k, str) and re.match(r"^[a-z][a-z0-9_]{0,39}$", k) and (
                isinstance(v, (int, float, bool)) or isinstance(v, str) and len(v) <= 200) for k, v in data.items()):
            raise ValueError("data: literal values by lowercase name (text of at most 200 characters, number, true/false)")
        return Step("webhook", {"webhook": sub.name, "fields": list(fields), "data": _plain(data)}, line, name)

    def _goto(self, value, raw, line, where, name):
        if not isinstance(value, str) or not _ID.match(value):
            raise ValueError("goto names another funnel: `goto: segmentation`")
        return Step("goto", value, line, name)

    def _exit(self, value, raw, line, where, name):
        if value not in (None, True) and not isinstance(value, str):
            raise ValueError("exit takes nothing, or a short reason")
        return Step("exit", value if isinstance(value, str) else None, line, name)

    def _suppress(self, value, raw, line, where, name):
        if value == "sunset":
            raise ValueError("suppress is for ever (like a hard bounce); a sunset is its own step, `- sunset`, "
                             "which fresh consent or a purchase undoes")
        if not isinstance(value, str) or not re.match(r"^[a-z0-9_-]{1,40}$", value):
            raise ValueError("suppress takes a reason word: `suppress: spam-trap`")
        return Step("suppress", value, line, name)

    def _sunset(self, value, raw, line, where, name):
        if value not in (None, True) and not (isinstance(value, str) and re.match(r"^[a-z0-9_ -]{1,40}$", value)):
            raise ValueError("sunset takes nothing, or a short reason: `- sunset` or `sunset: no response`")
        return Step("sunset", value if isinstance(value, str) else None, line, name)


_TOP = {"id", "name", "description", "trigger", "entry", "goals", "exits", "frequency_cap", "quiet_hours",
        "timezone", "steps", "list", "status", "utm"}
STATUSES = ("live", "draining")


def parse(path: Path, templates: bool = True) -> tuple[Funnel | None, list[str]]:
    """One funnel file -> (Funnel, []) or (None, errors). ``templates=False``: its emails need not
    exist (the copy the compiler keeps of a removed funnel, whose sends name kept versions)."""
    c = _Checker(path, templates)
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {getattr(exc, 'problem', exc)}"]
    if not isinstance(doc, dict):
        return None, [f"{path}:1: a funnel file is a mapping with id, trigger, entry and steps"]
    c.keys(doc, _TOP, doc.line, "funnel")
    fid = doc.get("id")
    if not isinstance(fid, str) or not _ID.match(fid):
        c.error(doc.line, "id: lowercase letters, digits and - (at most 40), starting with a letter")
        fid = path.stem
    elif fid != path.stem:
        c.error(doc.line, f"id {fid!r} must match the file name ({path.stem}.yaml)")
    trigger = _trigger(c, doc.get("trigger"), doc.line)
    entry_rule, reenter, handoff = _entry(c, doc.get("entry", "once_per_trigger"), doc.line)
    goals = tuple(e for e in (c.event(g, doc.line, "goals") for g in _list(doc.get("goals"))) if e)
    exits = tuple(e for e in (c.event(g, doc.line, "exits") for g in _list(doc.get("exits"))) if e)
    for event, where in [*([(trigger["event"], trigger["where"])] if trigger else []), *((e, None) for e in goals + exits)]:
        _segment_event(c, event, where, path.parent.parent / "segments.yaml", doc.line)
    cap, defer_up_to = _cap(c, doc.get("frequency_cap"), doc.line)
    quiet, spread = _quiet(c, doc.get("quiet_hours"), doc.line)
    tz = doc.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        c.error(doc.line, f"timezone {tz!r} is not an IANA time zone (e.g. Europe/Paris)")
    steps = c.steps(doc.get("steps"), doc.line, "")
    list_name = _list_name(c, doc.get("list"), path, doc.line)
    status = doc.get("status", "live")
    if status not in STATUSES:
        c.error(doc.line, f"status {status!r}: live, or draining (no new entries; people inside finish)")
    utm = _utm(c, doc.get("utm"), doc.line)
    funnel = Funnel(id=fid, path=path, name=str(doc.get("name") or fid), description=str(doc.get("description") or ""),
                    trigger=trigger, entry_rule=entry_rule, reenter_after=reenter, handoff=handoff, goals=goals,
                    exits=exits, frequency_cap=cap, defer_up_to=defer_up_to, quiet_hours=quiet,
                    quiet_spread=spread, timezone=str(tz), steps=steps,
                    list_name=list_name, status=str(status), utm=utm)
    _check_references(c, funnel)
    return (None if c.errors else funnel), c.errors


SEGMENT_EVENTS = ("segment.entered", "segment.left")


def _segment_event(c: "_Checker", event: str, where: dict | None, segments_file: Path, line: int) -> None:
    """segment.entered / segment.left exist only for the segments with ``events: true``: a trigger
    names such segments (``where: {segment: ...}``); a goal or exit needs one to exist."""
    if event not in SEGMENT_EVENTS:
        return
    from funnelpilot.segments import announced

    named = announced(segments_file)
    wanted = None if where is None else _list(where.get("segment"))
    if (not named if wanted is None else not wanted or any(not isinstance(w, str) or w not in named for w in wanted)):
        c.error(line, f"{event}: published only for the segments with `events: true` in segments.yaml "
                      f"({', '.join(sorted(named)) or 'none has it'})" + ("" if wanted is None else
                      "; name them in the trigger (where: {segment: [...]})"))


def _list_name(c: "_Checker", value, path: Path, line: int) -> str | None:
    """``list``: a list declared in the ``lists.yaml`` beside the funnels' folder."""
    if value is None:
        return None
    lists_file = path.parent.parent / "lists.yaml"
    declared = (yaml.safe_load(lists_file.read_text()) or {}).get("lists") or {} if lists_file.exists() else {}
    if not isinstance(value, str) or value not in declared:
        c.error(line, f"list {value!r} is not declared in lists.yaml (lists: {', '.join(declared) or 'none'})")
        return None
    return value


def _utm(c: "_Checker", value, line: int) -> dict | bool | None:
    """``utm: false`` (no tags on this funnel's links) or ``utm: {utm_campaign: spring}`` (overrides)."""
    if value is None or value is False:
        return value
    keys = {"utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term"}
    if not isinstance(value, dict) or set(value) - keys or not all(
            isinstance(v, str) and re.match(r"^[A-Za-z0-9._~-]{1,100}$", v) for v in value.values()):
        c.error(getattr(value, "line", line), f"utm: false, or a mapping of {', '.join(sorted(keys))} to plain "
                                              "words (letters, digits, . _ ~ -)")
        return None
    return dict(value)


def _list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _trigger(c: _Checker, node, line: int) -> dict | None:
    if node is None:
        return None  # entered only by a `goto` from another funnel (funnel.handoff)
    if isinstance(node, str):
        node = {"event": node}
    if not isinstance(node, dict):
        c.error(line, "trigger: `trigger: contact.subscribed` or `trigger: {event: ..., where: {...}}`")
        return None
    c.keys(node, {"event", "where"}, getattr(node, "line", line), "trigger")
    event = c.event(node.get("event"), getattr(node, "line", line), "trigger")
    where = node.get("where") or {}
    if not isinstance(where, dict):
        c.error(getattr(node, "line", line), "trigger.where: an EventBridge pattern on the event's detail fields")
        return None
    return {"event": event, "where": _plain(where)} if event else None


def _plain(value):
    """Drop the line-keeping dict subclass (for JSON and comparisons)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _entry(c: _Checker, node, line: int) -> tuple[str, float, str]:
    if isinstance(node, str):
        node = {"rule": node}
    if not isinstance(node, dict):
        c.error(line, f"entry: one of {', '.join(ENTRY_RULES)}, or `{{rule: ..., reenter_after: 30 days}}`")
        return "once_per_trigger", 0.0, "enter"
    line = getattr(node, "line", line)
    c.keys(node, {"rule", "reenter_after", "handoff"}, line, "entry")
    rule = node.get("rule")
    if rule not in ENTRY_RULES:
        c.error(line, f"entry rule {rule!r}: one of {', '.join(ENTRY_RULES)}")
        return "once_per_trigger", 0.0, "enter"
    reenter = 0.0
    if "reenter_after" in node:
        if rule == "once_per_contact":
            c.error(line, "entry: once_per_contact never re-enters; drop reenter_after")
        try:
            reenter = seconds(node["reenter_after"])
        except ValueError as exc:
            c.error(line, f"entry.reenter_after: {exc}")
    handoff = node.get("handoff", "enter")
    if handoff not in HANDOFF_MODES:
        c.error(line, f"entry.handoff {handoff!r}: `enter` (a hand-off enters even within reenter_after, the "
                      "default) or `respect_reentry` (a hand-off within reenter_after is refused)")
        handoff = "enter"
    elif handoff == "respect_reentry" and not reenter:
        c.error(line, "entry.handoff: respect_reentry needs a reenter_after to respect (e.g. `reenter_after: 30 days`)")
    return rule, reenter, handoff


def _cap(c: _Checker, node, line: int) -> tuple[tuple[int, float], float]:
    """((emails, hours), defer_up_to_hours) of ``frequency_cap``."""
    default = (1, 24.0), 72.0
    if node is None:
        return default
    if not isinstance(node, dict) or set(node) - {"emails", "hours", "defer_up_to_hours"}:
        c.error(line, "frequency_cap: `{emails: 1, hours: 24, defer_up_to_hours: 72}` (marketing emails per contact, "
                      "per window; how long a capped email waits for a free slot before it is skipped)")
        return default
    emails, hours, defer = node.get("emails", 1), node.get("hours", 24), node.get("defer_up_to_hours", 72)
    if not isinstance(emails, int) or isinstance(emails, bool) or emails < 1 or \
            not isinstance(hours, (int, float)) or isinstance(hours, bool) or not 0 < hours <= 24 * 30:
        c.error(getattr(node, "line", line), "frequency_cap: emails >= 1 and 0 < hours <= 720")
        return default
    if not isinstance(defer, (int, float)) or isinstance(defer, bool) or not 0 <= defer <= 24 * 30:
        c.error(getattr(node, "line", line), "frequency_cap: 0 <= defer_up_to_hours <= 720 (0: a capped email is "
                                             "skipped at once)")
        return default
    return (emails, float(hours)), float(defer)


def _quiet(c: _Checker, node, line: int) -> tuple[tuple[str, str] | None, int]:
    """((start, end) or None, spread_minutes) of ``quiet_hours``."""
    if node is None:
        return None, 60
    spread = node.get("spread_minutes", 60) if isinstance(node, dict) else None
    ok = isinstance(node, dict) and {"start", "end"} <= set(node) <= {"start", "end", "spread_minutes"} and all(
        isinstance(node[k], str) and _TIME.match(node[k]) for k in ("start", "end")) and node["start"] != node["end"]
    if not ok:
        c.error(getattr(node, "line", line), 'quiet_hours: `{start: "21:00", end: "08:00"}` (local time, HH:MM; '
                                             'optional spread_minutes: 60)')
        return None, 60
    if not isinstance(spread, int) or isinstance(spread, bool) or not 0 <= spread <= 240:
        c.error(getattr(node, "line", line), "quiet_hours: 0 <= spread_minutes <= 240 (the sends at the end of quiet "
                                             "hours start over that many minutes, each contact at its own minute)")
        return None, 60
    return (node["start"], node["end"]), spread


def _check_references(c: _Checker, funnel: Funnel) -> None:
    for step in walk(funnel.steps):
        conditions = [step.arg] if step.kind in ("if", "wait_for") else []
        for condition in conditions:
            for kind in ENGAGEMENT:
                if kind in condition and condition[kind]["email"] not in c.named_emails:
                    c.error(step.line, f"{step.kind}: {kind} {condition[kind]['email']!r} is not an email this funnel "
                                       f"sends (it sends: {', '.join(sorted(c.named_emails)) or 'nothing'})")
        if step.kind == "goto" and step.arg == funnel.id:
            c.error(step.line, "goto: a funnel cannot hand off to itself")


def load_all(directory: Path) -> dict[str, Funnel]:
    """Every funnel file in ``directory``, validated together (goto targets must exist)."""
    funnels, errors = {}, []
    paths = sorted(directory.glob("*.yaml"))
    for path in paths:
        funnel, problems = parse(path)
        errors += problems
        if funnel:
            funnels[funnel.id] = funnel
    known = {p.stem for p in paths}
    for funnel in funnels.values():
        for step in walk(funnel.steps):
            if step.kind == "goto" and step.arg not in known:
                errors.append(f"{funnel.path}:{step.line}: goto: no funnel {step.arg!r} "
                              f"(funnels: {', '.join(sorted(known))})")
            elif step.kind == "goto" and step.arg in funnels and funnels[step.arg].status == "draining" \
                    and funnel.status == "live":
                errors.append(f"{funnel.path}:{step.line}: goto: funnel {step.arg!r} is draining (it takes nobody "
                              "in): hand off to another funnel")
    if errors:
        raise FunnelError("\n".join(errors))
    return funnels


@cache
def load(funnel_id: str) -> Funnel:
    """A shipped funnel's settings at run time (the file is in the content layer; a removed one
    that drains: the compiler's copy). A funnel without either (a one-off step call) gets the defaults."""
    path, kept = config().content_dir / "funnels" / f"{funnel_id}.yaml", compiled_copy(config().content_dir, funnel_id)
    if not _ID.match(funnel_id) or not (path.exists() or kept.exists()):
        return Funnel(id=funnel_id)
    funnel, errors = parse(path) if path.exists() else parse(kept, templates=False)
    if errors:
        raise FunnelError("\n".join(errors))
    return funnel


def compiled_copy(content: Path, funnel_id: str) -> Path:
    """The funnel file as last compiled, which the compiler keeps beside its state machine: what a
    removed funnel drains from (compiler.drained)."""
    return content / "statemachines" / f"{funnel_id}.yaml"

"""``funnelpilot broadcast create|update|list|show|preview|test|schedule|pause|resume|cancel|report``.

Every command is one call of the broadcast admin routes (``functions/broadcasts_admin``), so the CLI
holds no broadcast logic: locally those of ``make serve`` (``--url``, the local admin key), for a
deployed stack (``--stack``) its ``ApiUrl`` with SigV4-signed requests (audience_cli.AdminApi).

A broadcast file (``infra/broadcasts/<name>.yaml``) is the spec of the admin API with its content
named by file (``content: {html: <name>.html.j2, text: <name>.txt.j2}``, beside the file; those two
by default): the CLI inlines them. A mistake is ``FILE:LINE: message`` (exit 2) and nothing is
created: a YAML error at its line, a refusal of the route (400 naming a field) at that field's line,
a template error at the line of the template file.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from funnelpilot_local.audience_cli import LOCAL_URL, AdminApi, CliError
from funnelpilot_local.cli import UserError

EXAMPLES = """examples:
  funnelpilot broadcast create infra/broadcasts/december-news.yaml     # the local runtime of `make serve`
  funnelpilot broadcast preview december-news --email ann@example.com --out news.html
  funnelpilot broadcast test december-news --to you@example.com
  funnelpilot broadcast schedule december-news --at 2026-12-08T09:00:00+01:00    # or --now
  funnelpilot broadcast schedule one-subject --local 09:00 --date 2026-12-08 --fallback-zone Europe/Berlin
  funnelpilot broadcast report december-news
  funnelpilot broadcast list --stack my-funnelpilot --region eu-west-1"""
CONTENT = {"html": ".html.j2", "text": ".txt.j2"}
_LINE = re.compile(r"\bline (\d+)\b")
_LINE_PREFIX = re.compile(r"^content\.(html|text)( line \d+)?: ")  # said by FILE:LINE instead


def register(sub) -> None:
    """The ``broadcast`` command and its sub-commands (``sub``: the top-level sub-parsers)."""
    top = sub.add_parser("broadcast", help="one-off emails to lists and segments: create, preview, test, schedule, "
                         "report", description="One-off emails to lists and segments, through the broadcast admin routes "
                         "(of `make serve`, or of --stack NAME).", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="broadcast_command", required=True)

    def command(name: str, help_text: str, bid: bool = True):
        p = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        if bid:
            p.add_argument("id", help="the broadcast's name (its id)")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--stack", help="a deployed stack's name (its admin routes, SigV4-signed)")
        target.add_argument("--url", default=LOCAL_URL, help=f"the local server (default {LOCAL_URL}: `make serve`)")
        p.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
        return p

    for name, what in (("create", "create a draft from a broadcast file (its content files inlined)"),
                       ("update", "replace a draft's (or a scheduled broadcast's) spec and content from its file")):
        command(name, what, bid=False).add_argument("file", type=Path, help="infra/broadcasts/<name>.yaml")
    command("list", "every broadcast: status, audience, sent", bid=False)
    command("show", "a broadcast's subject, audience, schedule and status").add_argument(
        "--json", action="store_true", help="everything, content included, as JSON")
    preview = command("preview", "the email as a person gets it: subject, preheader, audience size, HTML and text")
    preview.add_argument("--email", metavar="ADDRESS", help="render it for this person of the audience "
                                                          "(default: the sample contact)")
    preview.add_argument("--out", type=Path, metavar="FILE.html", help="write the HTML there (and the text beside it)")
    test = command("test", "send it to one address, '[Test]' before the subject, untracked and not counted")
    test.add_argument("--to", required=True, metavar="ADDRESS")
    schedule = command("schedule", "send now, at an instant, or at a local time in each person's time zone")
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--now", action="store_true", help="start sending now")
    when.add_argument("--at", metavar="ISO", help="an instant, ISO 8601 with its offset (2026-12-08T09:00:00+01:00)")
    when.add_argument("--local", metavar="HH:MM", help="this time of day in each recipient's zone (needs --date)")
    schedule.add_argument("--date", metavar="YYYY-MM-DD", help="the day of --local")
    schedule.add_argument("--fallback-zone", metavar="ZONE",
                          help="IANA zone of people without one (default UTC)")
    for name, what in (("pause", "stop sending (what is sent stays sent)"), ("resume", "go on sending what is left"),
                       ("cancel", "stop for good: nobody else gets it")):
        command(name, what)
    rep = command("report", "audience, sent, blocked by reason, deferred, delivered, opens, clicks... per variant")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    top.set_defaults(broadcast_run=run)


def run(args, api: AdminApi | None = None, out=None) -> int:
    out = out or sys.stdout
    try:
        api = api or AdminApi.for_args(args)
        return _COMMANDS[args.broadcast_command](args, api, out)
    except CliError as exc:
        raise UserError(str(exc)) from None
    except FileError as exc:
        print(exc, file=sys.stderr)
        return 2


def _answer(status: int, body, bid: str | None = None, options: bool = False):
    """The route's body, or the error it answered as one line (a UserError: exit 2); ``options``: a
    refused field is the command's option of that name (``--fallback-zone``)."""
    if status < 400:
        return body
    body = body if isinstance(body, dict) else {}
    detail = body.get("error") or body.get("message") or f"HTTP {status}"
    if status == 404 and bid is not None:
        detail = f"no broadcast named {bid!r} (funnelpilot broadcast list)"
    field = body.get("field") if status == 400 else None
    named = f"--{field.replace('_', '-')}" if field and options else field
    raise UserError(f"{named}: {_unprefixed(field, detail)}" if field else detail)


def _unprefixed(field: str, message: str) -> str:
    """The route's message without the field it starts with (the CLI names the field its own way)."""
    return message.removeprefix(f"{field}: ")


# ------------------------------------------------------------------ the broadcast file
class FileError(UserError):
    """A mistake in a broadcast file or its content: ``FILE:LINE: message`` on stderr as it is, exit 2."""


class Source:
    """A broadcast file read with the line of every key, and its content files."""

    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileError(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise FileError(f"{path}: not UTF-8 (byte {exc.start})") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise FileError(f"{path}:{mark.line + 1 if mark else 1}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(self.spec, dict):
            raise FileError(f"{path}:1: a broadcast file is a mapping (name, subject, list, audience, content...)")
        self.lines: dict[tuple, int] = {}  # (key, key...) -> line, list items by index
        self.items: dict[tuple, int] = {}  # (key..., value) -> line of that value in a list
        self._index(node, ())
        self.files: dict[str, Path] = {}

    def _index(self, node, at: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[(*at, str(key.value))] = key.start_mark.line + 1
                self._index(value, (*at, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self.lines[(*at, str(i))] = value.start_mark.line + 1
                if isinstance(value, yaml.ScalarNode):
                    self.items.setdefault((*at, value.value), value.start_mark.line + 1)
                self._index(value, (*at, str(i)))

    def line(self, field: str) -> int:
        """The line of a field (``audience.segments.1``, ``ab.subjects.b``, ``audience.segments[1]``), else of
        its nearest parent that the file has, else 1."""
        parts = tuple(p for p in re.split(r"[.\[\]]+", field or "") if p)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return 1

    def where(self, field: str, message: str) -> str:
        """``FILE:LINE: message`` for a field the route refused; a content error names its template file."""
        named = re.search(r"\bcontent\.(html|text)\b", f"{field} {message}") if field.startswith("content") else None
        kind = named.group(1) if named else None
        if kind and kind in self.files:
            m = _LINE.search(message)
            return f"{self.files[kind]}:{m.group(1) if m else 1}: {_LINE_PREFIX.sub('', message)}"
        said = message if not field or message.startswith(field) else f"{field}: {message}"
        path = re.match(r"^([\w.]+):", said)  # the route's message may name a deeper field (ab.subjects.b)
        line = self.line(path.group(1) if path and path.group(1).startswith(field) else field)
        for name in re.findall(r"'([^']+)'", message):  # a list's item by its value (unknown segment 'x')
            line = self.items.get((*field.split("."), name), line)
        return f"{self.path}:{line}: {said}"

    def inlined(self) -> dict:
        """The spec with each content file's text in place of its name."""
        spec = dict(self.spec)
        named = spec.get("content") if spec.get("content") is not None else {}
        if not isinstance(named, dict):
            raise FileError(f"{self.path}:{self.line('content')}: content: name the files, "
                            "content: {html: NAME.html.j2, text: NAME.txt.j2}")
        content = {}
        for kind, suffix in CONTENT.items():
            name = named.get(kind) or f"{self.path.name.removesuffix('.yaml').removesuffix('.yml')}{suffix}"
            file = self.path.parent / str(name)
            if not file.is_file():
                at = self.line(f"content.{kind}") if kind in named else self.line("content") if named else 1
                raise FileError(f"{self.path}:{at}: content.{kind}: no such file {file}")
            self.files[kind] = file
            content[kind] = file.read_text()
        if unknown := sorted(set(named) - set(CONTENT)):
            raise FileError(f"{self.path}:{self.line(f'content.{unknown[0]}')}: content.{unknown[0]}: "
                            "unknown part (html and text only)")
        spec["content"] = content
        return spec


    def link_problems(self, spec: dict) -> list[str]:
        """The checks `make funnels` makes of every funnel email (funnelpilot_local.email_check: a link to
        nowhere, an empty part), on this content rendered for the two sample contacts as the send path
        renders it: ``FILE:LINE: problem`` lines. Nothing when the spec or content does not render: the
        route then says why."""
        from funnelpilot import sequence
        from funnelpilot.broadcasts import content, spec as specs
        from funnelpilot.channels import emails
        from funnelpilot.errors import InvalidField, TemplateError
        from funnelpilot_local import email_check
        from funnelpilot_local.runtime import ROOT

        files = {f"{k}.j2": self.files[p] for k, p in (("html", "html"), ("txt", "text"))}
        found: dict[str, None] = {}
        with email_check.content(ROOT):
            try:
                spec = specs.validate(spec)
            except InvalidField:
                return []
            rules = email_check.LinkRules(ROOT)
            for variant in specs.variants(spec) or [None]:
                name = content.name(spec["name"], variant)
                for contact in email_check.sample_contacts():
                    ctx = {**emails.sender_context(), **sequence.template_context(
                        contact, email_check.SAMPLE_MESSAGE, None, spec["list"])}
                    try:
                        rendered, spans = email_check.traced(ROOT / "infra" / "emails", name, ctx,
                                                             content.sources(spec["name"], spec, variant))
                    except TemplateError:
                        return []
                    for file, line, problem in rules.problems(name, rendered, spans, ctx):
                        shown = files.get(file.removeprefix(f"{name}."), f"infra/emails/{file}")
                        found.setdefault(f"{shown}:{line}: {problem}", None)
        return list(found)


def _save(args, api, out) -> int:
    source = Source(args.file)
    spec = source.inlined()
    if problems := source.link_problems(spec):
        raise FileError("\n".join(problems))
    if args.broadcast_command == "create":
        status, body = api.request("POST", "/broadcasts", spec)
    else:
        bid = str(spec.get("name") or "")
        if not bid:
            raise FileError(f"{args.file}:1: name: required (the broadcast's id)")
        status, body = api.request("PUT", f"/broadcasts/{bid}", spec)
        if status == 404:
            raise FileError(f"{args.file}:{source.line('name')}: name: no broadcast named {bid!r}: "
                            "`funnelpilot broadcast create` it first")
    if status == 400 and isinstance(body, dict):
        raise FileError(source.where(str(body.get("field") or ""), body.get("error") or "refused"))
    if status == 409 and args.broadcast_command == "create":
        raise FileError(f"{args.file}:{source.line('name')}: name: {(body or {}).get('error')}: "
                        "`funnelpilot broadcast update` changes a draft")
    made = _answer(status, body)
    verb = "created" if args.broadcast_command == "create" else "updated"
    print(f"{verb} broadcast {made['id']} ({made.get('status')}): `funnelpilot broadcast preview {made['id']}`, "
          f"then `schedule {made['id']} --now`", file=out)
    return 0


# ------------------------------------------------------------------ the other commands
def _list(args, api, out) -> int:
    found = _answer(*api.request("GET", "/broadcasts"))["broadcasts"]
    rows = [("id", "status", "schedule", "created")]
    rows += [(b["id"], b.get("status", "?"), _when(b) or "-", b.get("created_at", "-")) for b in found]
    print(_columns(rows, left=(0, 1, 2, 3)) if found else
          "no broadcasts yet: funnelpilot broadcast create infra/broadcasts/NAME.yaml", file=out)
    return 0


def _show(args, api, out) -> int:
    found = _answer(*api.request("GET", f"/broadcasts/{args.id}"), args.id)
    print(json.dumps(found, indent=2) if args.json else format_broadcast(found), file=out)
    return 0


def format_broadcast(b: dict) -> str:
    """A broadcast as a few lines: what it sends, to whom, when, and where it is."""
    spec = b.get("spec") or {}
    ab, audience = spec.get("ab"), spec.get("audience") or {}
    subjects = [(f"subject {v}", s) for v, s in ab["subjects"].items()] if ab else [("subject", spec.get("subject"))]

    def names(*keys) -> str:
        return "; ".join(f"{k.replace('_', ' ')} {', '.join(audience[k])}" for k in keys if audience.get(k)) or "-"

    rows = [*subjects, ("preheader", spec.get("preheader") or "-"), ("list", spec.get("list")),
            ("audience", names("lists", "segments")), ("excluding", names("exclude_lists", "exclude_segments")),
            ("sending", f"frequency cap {spec.get('frequency_cap')}, priority {spec.get('priority')}")]
    if ab:
        rows.append(("A/B", f"{ab['sample_percent']}% sample, then the best on {ab['metric']} after "
                            f"{ab['wait_hours']:g} h" + (f": winner {b['winner']}" if b.get("winner") else "")))
    rows += [("schedule", _when(b) or "-"), ("created", b.get("created_at")),
             *((k.replace("_at", ""), b[k]) for k in ("started_at", "finished_at", "cancelled_at") if b.get(k))]
    return "\n".join([f"{b['id']}  {b.get('status')}", *(f"  {label:<14}{value}" for label, value in rows)])


def _preview(args, api, out) -> int:
    body = {"email": args.email} if args.email else {}
    seen = _answer(*api.request("POST", f"/broadcasts/{args.id}/preview", body), args.id, options=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(seen["html"])
        args.out.with_suffix(".txt").write_text(seen["text"])
        print(f"wrote: {args.out}\nwrote: {args.out.with_suffix('.txt')}", file=out)
    subjects = seen.get("subjects") or {"": seen["subject"]}
    for variant, subject in subjects.items():
        print(f"subject{f' {variant}' if variant else ''}:".ljust(11) + subject, file=out)
    print(f"preheader: {seen.get('preheader') or '-'}\naudience:  {_n(seen.get('audience'))} (members of its lists "
          "and segments; the checks at send time come after)", file=out)
    if not args.out:
        print(f"\n{seen['text']}", file=out)
    return 0


def _test(args, api, out) -> int:
    done = _answer(*api.request("POST", f"/broadcasts/{args.id}/test", {"to": args.to}), args.id, options=True)
    for sent in done.get("sent") or [done]:
        print(f"sent to {done.get('to', args.to)}: {sent['subject']}" + (f" (variant {sent['variant']})"
                                                                        if sent.get("variant") else ""), file=out)
    print("untracked (links go straight to their pages, no open pixel) and not counted", file=out)
    return 0


def _schedule(args, api, out) -> int:
    if args.local and not args.date:
        raise UserError("--local needs --date YYYY-MM-DD (the day of that local time)")
    if (args.date or args.fallback_zone) and not args.local:
        raise UserError("--date and --fallback-zone go with --local HH:MM")
    when = ({"now": True} if args.now else {"at": args.at} if args.at else
            {"local": args.local, "date": args.date, "fallback_zone": args.fallback_zone or "UTC"})
    done = _answer(*api.request("POST", f"/broadcasts/{args.id}/schedule", when), args.id, options=True)
    print(f"{args.id}: {done.get('status')} {_when(done)}; `funnelpilot broadcast report {args.id}` follows it",
          file=out)
    return 0


def _change(args, api, out) -> int:
    done = _answer(*api.request("POST", f"/broadcasts/{args.id}/{args.broadcast_command}"), args.id)
    print(f"{args.id}: {done.get('status')}", file=out)
    return 0


def _report(args, api, out) -> int:
    rep = _answer(*api.request("GET", f"/broadcasts/{args.id}/report"), args.id)
    print(json.dumps(rep, indent=2) if args.json else report_table(args.id, rep), file=out)
    return 0


_COMMANDS = {"create": _save, "update": _save, "list": _list, "show": _show, "preview": _preview, "test": _test,
             "schedule": _schedule, "pause": _change, "resume": _change, "cancel": _change, "report": _report}


# ------------------------------------------------------------------ formatting
def _n(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _when(state: dict) -> str:
    """A broadcast's schedule in words: now, at an instant, or a local time with its fallback zone."""
    when = state.get("when") or {}
    if when.get("now"):
        return "now"
    if when.get("at"):
        return f"at {when['at']}"
    if when.get("local"):
        return f"{when['local']} in each person's zone on {when['date']} (else {when['fallback_zone']})"
    return ""


def _decision(d: dict) -> str:
    """How the A/B winner was chosen, on the sample's figures at that moment."""
    on = d["metric"] if d["by"] == "tie" else d["by"]
    why = ("a tie on clicks and opens: the first variant" if d["by"] == "tie" else
           f"on human {on}" + (f" ({d['metric']} were tied)" if on != d["metric"] else ""))
    figures = "; ".join(f"{v} {c[on]} of {c['sent']} ({c[on] / c['sent']:.1%})" if c["sent"] else f"{v}: none sent"
                        for v, c in d["sample"].items())
    return f"{why}, in the sample at {d['at'][:16].replace('T', ' ')} UTC ({on}: {figures})"


def _columns(rows: list[tuple], left: tuple = (0,)) -> str:
    """Aligned columns: those of ``left`` to the left, numbers to the right."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)


def _pct(part, whole) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _money(revenue) -> str:
    if isinstance(revenue, dict):
        from funnelpilot.steering import attribution

        return attribution.fmt(revenue)
    return "-" if not revenue else f"{revenue:,.2f}"


def report_table(bid: str, rep: dict) -> str:
    """The report as a small table: one column for the whole broadcast, one per A/B variant."""
    variants = rep.get("variants") or {}
    columns = [("total", rep), *((f"variant {v}", variants[v]) for v in sorted(variants))]

    def row(label: str, value) -> tuple:
        return (label, *(value(r) for _, r in columns))

    def rate(key: str):
        return lambda r: f"{_n(r.get(key, 0))} ({_pct(r.get(key, 0), r.get('delivered') or r.get('sent'))})"

    rows = [("", *(name for name, _ in columns)),
            row("audience", lambda r: _n(r.get("audience"))), row("sent", lambda r: _n(r.get("sent", 0))),
            row("blocked", lambda r: _n(sum((r.get("blocked") or {}).values())))]
    for reason in sorted({k for _, r in columns for k in (r.get("blocked") or {})}):
        rows.append(row(f"  {reason}", lambda r, k=reason: _n((r.get("blocked") or {}).get(k, 0))))
    rows.append(row("deferred", lambda r: _n(r.get("deferred", 0))))
    rows.append(row("skipped", lambda r: _n(r.get("skipped", 0))))
    for reason in sorted({k for _, r in columns for k in (r.get("skipped_reasons") or {})}):
        rows.append(row(f"  {reason}", lambda r, k=reason: _n((r.get("skipped_reasons") or {}).get(k, 0))))
    rows.append(row("delivered", lambda r: _n(r.get("delivered", 0))))
    rows += [row("human opens", rate("opens_human")), row("human clicks", rate("clicks_human")),
             row("machine opens", lambda r: _n(r.get("machine_opens", 0))),
             row("machine clicks", lambda r: _n(r.get("machine_clicks", 0)))]
    rows += [row(k, lambda r, k=k: _n(r.get(k, 0))) for k in ("unsubscribes", "conversions")]
    rows += [row("revenue", lambda r: _money(r.get("revenue"))),
             *(row(k, lambda r, k=k: _n(r.get(k, 0))) for k in ("bounces", "complaints"))]
    head = f"broadcast {bid}: {rep.get('status', '?')}" + (f", subject {rep['subject']!r}" if rep.get("subject") else "")
    lines = [head, *("  " + line for line in _columns(rows).splitlines())]
    if rep.get("winner"):
        lines.append(f"  A/B winner: {rep['winner']}" + (f", {_decision(rep['decision'])}" if rep.get("decision") else ""))
    lines.append("  rates are of delivered emails (of sent ones while no delivery is recorded); machine hits "
                 "(Apple Mail prefetches, link scanners) are never counted as people")
    return "\n".join(lines)

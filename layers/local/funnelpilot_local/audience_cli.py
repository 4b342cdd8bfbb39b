"""``funnelpilot contacts show|export|erase|tag|untag|set``: find and act on a person by email.

Every command goes through the admin routes, so the CLI holds no logic of its own and no signing
key: locally those of ``make serve`` (``--url``, the local admin key), for a deployed stack
(``--stack``) its ``ApiUrl``, with requests signed with SigV4 for ``execute-api`` (your AWS
credentials need ``execute-api:Invoke`` on the API). The address goes in a request body only.
"""
import csv
import json
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode

LOCAL_URL = "http://127.0.0.1:3000"

EXAMPLES = """examples:
  funnelpilot contacts show ann@example.com                 # the local runtime of `make serve`
  funnelpilot contacts show ann@example.com --stack funnelpilot --region eu-west-1
  funnelpilot contacts export ann@example.com > ann.json    # GDPR export (every item, JSON)
  funnelpilot contacts export --list newsletter > newsletter.csv
  funnelpilot contacts export --segment hot-leads > hot-leads.csv
  funnelpilot contacts erase ann@example.com --yes          # GDPR erasure
  funnelpilot contacts tag ann@example.com vip webinar
  funnelpilot contacts untag ann@example.com vip
  funnelpilot contacts set ann@example.com company="Acme Ltd" employees=12   # fields of infra/fields.yaml"""


class CliError(Exception):
    """A user error: printed as one line, exit code 1."""


class AdminApi:
    """The admin routes of the local server or of a deployed stack (SigV4-signed)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, region: str | None = None):
        self.base_url, self.api_key, self.region = base_url.rstrip("/"), api_key, region

    @classmethod
    def for_stack(cls, stack: str, region: str | None) -> "AdminApi":
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        region = region or boto3.session.Session().region_name or "us-east-1"
        try:
            outputs = boto3.client("cloudformation", region_name=region).describe_stacks(
                StackName=stack)["Stacks"][0].get("Outputs", [])
        except (BotoCoreError, ClientError) as exc:
            raise CliError(f"stack {stack} in {region}: {exc}") from None
        url = next((o["OutputValue"] for o in outputs if o["OutputKey"] == "ApiUrl"), None)
        if not url:
            raise CliError(f"stack {stack} has no ApiUrl output")
        return cls(url, region=region)

    @classmethod
    def for_args(cls, args) -> "AdminApi":
        """The stack's (``--stack``, SigV4) or the local server's (``--url``, the local admin key)."""
        from funnelpilot_local.runtime import LOCAL_ADMIN_KEY

        return cls.for_stack(args.stack, args.region) if args.stack else cls(args.url, api_key=LOCAL_ADMIN_KEY)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | list | None]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data is not None else {}
        url = self.base_url + path
        if self.api_key:
            headers["x-api-key"] = self.api_key
        if self.region:
            headers = self._signed(method, url, data, headers)
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            hint = " (is `make serve` running? or pass --stack NAME)" if not self.region else ""
            raise CliError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}{hint}") from None
        return status, json.loads(raw) if raw else None

    def _signed(self, method: str, url: str, data: bytes | None, headers: dict) -> dict:
        import boto3
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = boto3.session.Session().get_credentials()
        if credentials is None:
            raise CliError("no AWS credentials found (aws configure, or AWS_PROFILE)")
        req = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(req)
        return dict(req.headers.items())


def register(sub) -> None:
    """Add the ``contacts`` commands of this module to the ``contacts`` sub-parsers."""
    import argparse

    def command(name: str, help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        target = p.add_mutually_exclusive_group()
        target.add_argument("--stack", help="a deployed stack's name (its admin routes, SigV4-signed)")
        target.add_argument("--url", default=LOCAL_URL, help=f"the local server (default {LOCAL_URL}: `make serve`)")
        p.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
        p.set_defaults(contacts_run=run)
        return p

    show = command("show", "a person's profile, fields, lists and consent, scores, segments, funnels and emails")
    show.add_argument("email")
    show.add_argument("--json", action="store_true", help="print the card as JSON")
    export = command("export", "GDPR export of one person (JSON), or a list's or segment's members (CSV)")
    export.add_argument("email", nargs="?")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--list", help="every contact on this list (CSV on stdout)")
    which.add_argument("--segment", help="every member of this segment (CSV on stdout)")
    erase = command("erase", "GDPR erasure of one person: every item, their journeys stopped")
    erase.add_argument("email")
    erase.add_argument("--yes", action="store_true", help="really erase (nothing is kept)")
    for name, what in (("tag", "add tags"), ("untag", "remove tags")):
        p = command(name, f"{what} (segments follow)")
        p.add_argument("email")
        p.add_argument("tags", nargs="+", metavar="TAG")
    setp = command("set", "set custom fields (declared in infra/fields.yaml)")
    setp.add_argument("email")
    setp.add_argument("pairs", nargs="+", metavar="NAME=VALUE")


def run(args, api: AdminApi | None = None, out=None) -> int:
    out = out or sys.stdout
    try:
        api = api or AdminApi.for_args(args)
        return _COMMANDS[args.contacts_command](args, api, out)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _answer(status: int, body, what: str):
    if status == 404:
        raise CliError(f"no contact with this email{what}")
    if status >= 400:
        detail = (body or {}).get("error") or (body or {}).get("message") or status
        raise CliError(f"{detail}" + (f" ({body['field']})" if isinstance(body, dict) and body.get("field") else ""))
    return body


def find(api: AdminApi, email: str) -> dict:
    return _answer(*api.request("POST", "/contacts/lookup", {"email": email}), "")


def _show(args, api, out) -> int:
    found = find(api, args.email)
    print(json.dumps(found, indent=2) if args.json else format_card(found), file=out)
    return 0


def _export(args, api, out) -> int:
    if args.list or args.segment:
        if args.email:
            raise CliError("give an email, or --list/--segment, not both")
        kind, name = ("lists", args.list) if args.list else ("segments", args.segment)
        return export_members(api, kind, name, out)
    if not args.email:
        raise CliError("give an email, or --list NAME, or --segment NAME")
    cid = find(api, args.email)["contact_id"]
    print(json.dumps(_answer(*api.request("GET", f"/contacts/{cid}/export"), ""), indent=2), file=out)
    return 0


def export_members(api: AdminApi, kind: str, name: str, out) -> int:
    """Page through ``GET /<kind>/<name>/members`` and write CSV rows as they come (a page at a time)."""
    cursor, writer, count = None, None, 0
    while True:
        query = f"?{urlencode({'cursor': cursor})}" if cursor else ""
        page = _answer(*api.request("GET", f"/{kind}/{quote(name, safe='')}/members{query}"), "")
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=page["columns"], extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
        writer.writerows(page["rows"])
        count += len(page["rows"])
        cursor = page.get("next")
        if not cursor:
            print(f"{count} contacts", file=sys.stderr)
            return 0


def _erase(args, api, out) -> int:
    cid = find(api, args.email)["contact_id"]
    if not args.yes:
        raise CliError(f"this erases contact {cid} and everything about them for good: add --yes")
    _answer(*api.request("DELETE", f"/contacts/{cid}"), "")
    print(f"erased contact {cid}", file=out)
    return 0


def _change(args, api, out) -> int:
    if args.contacts_command == "set":
        bad = [p for p in args.pairs if "=" not in p or not p.split("=", 1)[0]]
        if bad:
            raise CliError(f"expected NAME=VALUE, got {bad[0]!r}")
        body = {"set": dict(p.split("=", 1) for p in args.pairs)}
    else:
        body = {args.contacts_command: args.tags}
    cid = find(api, args.email)["contact_id"]
    card = _answer(*api.request("PATCH", f"/contacts/{cid}", body), "")
    print(f"tags:    {', '.join(card['tags']) or '-'}\nfields:  {_fields(card['fields'])}", file=out)
    return 0


def _fields(fields: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items())) or "-"


_COMMANDS = {"show": _show, "export": _export, "erase": _erase, "tag": _change, "untag": _change, "set": _change}


def format_card(card: dict) -> str:
    """The card as text for a terminal."""
    p = card["profile"]
    name = p.get("first_name") or ""
    status = p.get("status", "?") + (f" ({p['status_reason']})" if p.get("status_reason") else "")
    rows = [("contact id", card["contact_id"]),
            ("status", status + (f", confirmed {p['confirmed_at']}" if p.get("confirmed_at") else "")),
            ("created", f"{p.get('created_at')}" + (f", time zone {p['timezone']}" if p.get("timezone") else "")),
            ("lists", (", ".join(card["lists"]) or "-")
             + (f" (opted out: {', '.join(card['unsubscribed_lists'])})" if card.get("unsubscribed_lists") else "")),
            ("tags", ", ".join(card["tags"]) or "-"), ("fields", _fields(card["fields"])),
            ("lead magnet", ", ".join(card["lead_magnets"]) or "-"), ("utm", _fields(card["utm"])),
            ("scores", f"capture {card['scores']['capture']}, loyalty {card['scores']['loyalty']} "
                       f"({card['scores']['orders']} orders, spend {card['scores']['spend']})"),
            ("segments", ", ".join(card["segments"]) or "-")]
    lines = [f"{name} <{p.get('email')}>".strip(), *(f"  {label:<12}{value}" for label, value in rows), "consent"]
    for c in card["consent"]:
        lines.append(f"  {c['at']}  {c['list']:<12} {c.get('confirmation') or '-':<14} {c.get('source') or '-'}"
                     + (f"  ip {c['ip']}" if c.get("ip") else ""))
    lines.append("funnels")
    for f in card["funnels"]:
        lines.append(f"  {f['funnel']:<14} {f.get('status', '?'):<10} {f.get('state') or '-':<28} "
                     f"entered {f.get('entered_at')}")
        if f.get("console_url"):
            lines.append(f"    {f['console_url']}")
    lines.append("emails")
    for e in card["timeline"]:
        if e["event"] == "refused":  # a hand-off the funnel refused (funnelpilot.funnels.refuse)
            lines.append(f"  {e['at']}  {'refused':<10} {e.get('funnel') or '-':<16} {e.get('reason')}"
                         + (f", handed off by {e['from']}" if e.get("from") else ""))
            continue
        who = "" if "human" not in e else "human" if e["human"] else f"machine: {e.get('reason')}"
        lines.append(f"  {e['at']}  {e['event']:<10} {e.get('template') or '-':<16} {who}"
                     + (f"  {e['url']}" if e.get("url") else "") + (f"  ({e['reason']})" if e["event"] == "blocked" else ""))
    return "\n".join(lines)

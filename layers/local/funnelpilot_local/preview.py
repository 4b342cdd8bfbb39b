"""``funnelpilot preview`` and ``funnelpilot send-test``: one email of the checkout's templates, as
the send path builds it, for a sample contact or a real one.

The settings (``PublicUrl``, ``SiteUrl``, the sender...) are those of the local server (``make
serve``), or with ``--stack`` those the stack's sequence-step function runs with (read with the
caller's credentials). The message is built by the send path's own functions
(``funnelpilot.sequence.compose``, ``consent.confirmation_email``, ``alerts.alert_email``); its
links are signed with the local runtime's key, so they work on ``make serve``. A test send goes
out untracked (links point straight at their targets, no open pixel, no message item: nothing is
counted), with ``[TEST]`` before the subject and ``X-Funnelpilot-Test`` (SES feedback ignores its
events): locally to ``.local/outbox/``, on a stack through SES with the caller's credentials.
"""
import email
import html as html_lib
import json
import re
import time
from email import policy
from email.utils import parseaddr
from html.parser import HTMLParser
from pathlib import Path

from funnelpilot_local import email_check
from funnelpilot_local.cli import UserError

LOCAL_URL = "http://127.0.0.1:3000"
STEP_FUNCTION = "SequenceStepFunction"
_PREHEADER = re.compile(r'<div style="display:none;[^"]*"[^>]*>([^<]*)</div>')
IMAGE_ONLY_BYTES = 3200  # SpamAssassin's HTML_IMAGE_ONLY_04.._32: an HTML part with images, of at most 3,200 bytes


def local_settings(root: Path) -> dict[str, str]:
    """The sequence step's environment as `make serve` runs it (template.yaml with the local
    server's parameters): the variables that do not name a resource."""
    from funnelpilot_local.server import site_parameters
    from funnelpilot_local.template import Template

    template = Template.load(root, {"PublicUrl": LOCAL_URL, **site_parameters(3000)})
    env = {}
    for name, value in template.properties(STEP_FUNCTION).get("Environment", {}).get("Variables", {}).items():
        try:
            env[name] = str(template.resolve(value))
        except KeyError:  # a table, the bus...: nothing a preview uses
            continue
    return env


def step_function(stack: str, region: str | None) -> str:
    """The name of the stack's sequence-step function (CloudFormation DescribeStackResource)."""
    import boto3

    return boto3.client("cloudformation", region_name=region).describe_stack_resource(
        StackName=stack, LogicalResourceId=STEP_FUNCTION)["StackResourceDetail"]["PhysicalResourceId"]


def stack_settings(stack: str, region: str | None) -> dict[str, str]:
    """The environment the stack's sequence-step function runs with (Lambda GetFunctionConfiguration)."""
    import boto3

    config = boto3.client("lambda", region_name=region).get_function_configuration(
        FunctionName=step_function(stack, region))
    return dict(config.get("Environment", {}).get("Variables", {}))


def local_contact(email_address: str, state_dir: Path):
    """A person of the local runtime's table (``.local/contacts-table.json``, which `make serve` and
    `contacts import` keep)."""
    from funnelpilot.audience import lookup
    from funnelpilot.models import Contact
    from funnelpilot_local.contacts_cli import TABLE_FILE

    path = Path(state_dir) / TABLE_FILE
    items = json.loads(path.read_text()) if path.exists() else []
    cid = lookup.contact_id(email_address)
    item = next((i for i in items if i["pk"]["S"] == cid and i["sk"]["S"] == "PROFILE"), None)
    if item is None or item.get("status", {}).get("S") == "erased":
        raise UserError(f"--contact {email_address}: nobody with that address in {path} (sign up on `make serve`, "
                           "which saves the table when it stops, or `contacts import`; or use --sample)")
    return Contact.from_raw_data(item)


def stack_contact(email_address: str, stack: str, region: str | None):
    """A person of a deployed stack, from the admin lookup (``POST /contacts/lookup``, SigV4)."""
    from funnelpilot.models import PROFILE, Contact
    from funnelpilot_local.contacts_cli import AdminApi, CliError

    try:
        status, card = AdminApi.for_stack(stack, region).request("POST", "/contacts/lookup", {"email": email_address})
    except CliError as exc:
        raise UserError(str(exc)) from None
    if status != 200:
        raise UserError(f"--contact {email_address}: the stack's lookup answered {status} {card}")
    p = card["profile"]
    return Contact(card["contact_id"], PROFILE, email=p["email"], first_name=p.get("first_name"),
                   status=p.get("status", "active"), properties=card.get("fields") or {},
                   lead_magnets=set(card.get("lead_magnets") or ()), lists=set(card.get("lists") or ()),
                   tags=set(card.get("tags") or ()), segments=set(card.get("segments") or ()),
                   orders=card.get("scores", {}).get("orders"), spend=card.get("scores", {}).get("spend"))


def known_templates(root: Path) -> list[str]:
    from funnelpilot.funnel_spec import load_all

    return email_check.used_templates(load_all(root / "infra" / "funnels"))


def compose(root: Path, template: str, contact, message_id: str, tracked: bool = True) -> tuple[bytes, list]:
    """(raw MIME, tracked links) of ``template`` for ``contact``, by the function its sender uses."""
    from funnelpilot import consent, funnel_spec, sequence
    from funnelpilot.channels import alerts

    if template == "confirm":
        return consent.confirmation_email(contact, consent.declared_lists()[0], None, message_id), []
    if template == "sales-alert":
        return alerts.alert_email(email_check.context(template, contact), message_id), []
    funnels = funnel_spec.load_all(root / "infra" / "funnels")
    sender = next(f for f in funnels.values() if template in f.sends())
    list_name = sender.list_name or (sorted(contact.lists or ()) or consent.declared_lists())[0]
    links, raw = sequence.compose(contact, template, message_id, list_name=list_name, tracked=tracked)
    return raw, links


def build(root: Path, template: str, *, contact_email: str | None = None, stack: str | None = None,
          region: str | None = None, state_dir: Path = Path(".local"), tracked: bool = True):
    """The email and what to say about it: (raw MIME, facts)."""
    from funnelpilot import tokens
    from funnelpilot_local.runtime import LOCAL_SECRET

    if template not in (known := known_templates(root)):
        raise UserError(f"{template!r}: not an email a funnel or funnelpilot sends (emails: {', '.join(known)})")
    settings = stack_settings(stack, region) if stack else local_settings(root)
    settings.pop("CONTENT_DIR", None)  # the checkout's templates, not the deployed layer's
    with email_check.content(root, settings, key=LOCAL_SECRET.encode()):
        if contact_email:
            contact = stack_contact(contact_email, stack, region) if stack else local_contact(contact_email, state_dir)
        else:
            contact = email_check.sample_contacts()[0]
        message_id = tokens.digest_id("m", "preview", template)
        raw, links = compose(root, template, contact, message_id, tracked)
        facts = describe(raw, links, email_check.LinkRules(root), {"public_url": settings.get("PUBLIC_URL"),
                                                                   "site_url": settings.get("SITE_URL")})
    return raw, facts


class _Text(HTMLParser):
    """The text a reader (and a spam filter) sees in an HTML part: no head, style or script."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.parts, self._skip = [], 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("head", "style", "script", "title")

    def handle_endtag(self, tag):
        self._skip -= tag in ("head", "style", "script", "title") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.parts)).strip()


def describe(raw: bytes, links: list, rules, ctx: dict) -> dict:
    """The spam-filter-relevant facts of a message: subject, preheader, sizes, text/HTML ratio,
    words, links (tracked or not, and where they go), images, headers, warnings."""
    from funnelpilot import tokens

    msg = email.message_from_bytes(raw, policy=policy.default)
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    html = html_part.get_content().replace("\r\n", "\n") if html_part else ""  # SMTP's line ends, as a file's
    text = text_part.get_content().replace("\r\n", "\n") if text_part else ""
    visible = _Text(html).text
    found, images, warnings = [], [], []
    tags = email_check.tags(html)
    for _, attrs in tags.links:
        href = attrs.get("href") or ""
        token = href.rsplit("/c/", 1)[1] if ctx.get("public_url") and href.startswith(f"{ctx['public_url']}/c/") else None
        fields = tokens.verify("c", token, 3) if token else None
        if fields and fields[2] == tokens.HONEYPOT:
            continue  # the hidden trap link: machines only
        if fields:
            target = links[int(fields[2])]
            target = target if isinstance(target, str) else target["url"]
            found.append({"target": target, "tracked": True})
        else:
            found.append({"target": href, "tracked": False})
    for link in found:
        if problem := rules.nowhere(link["target"], ctx):
            warnings.append(problem)
    for _, attrs in tags.images:
        src = attrs.get("src") or ""
        pixel = bool(ctx.get("public_url")) and src.startswith(f"{ctx['public_url']}/o/")
        images.append({"src": src, "alt": attrs.get("alt"), "open_pixel": pixel})
        if not pixel and not (attrs.get("alt") or "").strip():
            warnings.append(f"image without alt text: {src}")
    text_bytes, html_bytes = len(visible.encode()), len(html.encode())
    if images and html_bytes <= IMAGE_ONLY_BYTES:  # SpamAssassin measures the raw HTML (HTML.pm: length)
        band = min(32, max(4, -(-html_bytes // 400) * 4))
        warnings.append(f"image-only body: an HTML part of {html_bytes} bytes with {len(images)} image(s) (the open "
                        f"pixel counts): SpamAssassin's HTML_IMAGE_ONLY_{band:02d} (its HTML_IMAGE_ONLY_* rules fire up "
                        f"to {IMAGE_ONLY_BYTES} bytes); write more text")
    if not text.strip():
        warnings.append("no text part: every email needs a plain-text part")
    if not html.strip():
        warnings.append("no HTML part")
    headers = {k: str(msg[k]) for k in ("From", "Reply-To", "To", "List-Unsubscribe", "List-Unsubscribe-Post",
                                         "List-Id", "Feedback-ID") if msg[k] is not None}
    hidden = _PREHEADER.search(html)  # the layout's hidden preheader, else what an inbox shows first
    preheader = re.sub(r"[\s\u034f\u2007]+", " ", html_lib.unescape(hidden[1])).strip() if hidden else visible[:100]
    return {"subject": str(msg["Subject"]), "preheader": preheader, "size_kb": round(len(raw) / 1024, 1),
            "html_bytes": len(html.encode()), "text_bytes": text_bytes,
            "text_html_ratio": round(text_bytes / max(1, len(html.encode())), 2),
            "words": len(visible.split()), "text_part_words": len(text.split()), "links": found, "images": images,
            "headers": headers, "warnings": warnings, "html": html, "text": text}


def report(facts: dict) -> str:
    """What `funnelpilot preview` prints."""
    lines = [f"subject:   {facts['subject']}", f"preheader: {facts['preheader']}",
             f"size:      {facts['size_kb']} KB (HTML {facts['html_bytes']} bytes, visible text {facts['text_bytes']} "
             f"bytes: text/HTML ratio {facts['text_html_ratio']:.2f})",
             f"words:     {facts['words']} in the HTML part, {facts['text_part_words']} in the text part"]
    lines += [f"header:    {k}: {v}" for k, v in facts["headers"].items()]
    lines.append(f"links:     {len(facts['links'])}")
    lines += [f"  {'tracked  ' if link['tracked'] else 'untracked'} {link['target']}" for link in facts["links"]]
    lines.append(f"images:    {len(facts['images'])}")
    lines += [f"  {'open pixel (1x1)' if i['open_pixel'] else 'alt=' + json.dumps(i['alt'])} {i['src']}"
              for i in facts["images"]]
    lines.append(f"warnings:  {len(facts['warnings']) or 'none'}")
    lines += [f"  {w}" for w in facts["warnings"]]
    return "\n".join(lines)


def write(out: Path, name: str, raw: bytes, facts: dict) -> list[Path]:
    """NAME.html, NAME.txt and NAME.eml in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.html", out / f"{name}.txt", out / f"{name}.eml"]
    paths[0].write_text(facts["html"])
    paths[1].write_text(facts["text"])
    paths[2].write_bytes(raw)
    return paths


def send_test(root: Path, template: str, to: str, *, contact_email: str | None = None, stack: str | None = None,
              region: str | None = None, state_dir: Path = Path(".local")) -> str:
    """Send ``template`` to ``to`` untracked: locally into the outbox, on ``stack`` through SES (the
    stack's sender, your credentials). Where it went."""
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", to):
        raise UserError(f"--to {to!r}: not an email address")
    raw, _ = build(root, template, contact_email=contact_email, stack=stack, region=region, state_dir=state_dir,
                   tracked=False)
    from funnelpilot.channels import mime

    raw = mime.as_test(raw, to)
    if not stack:
        path = Path(state_dir) / "outbox" / f"test-{template}-{time.strftime('%Y%m%dT%H%M%S')}.eml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return str(path)
    import boto3

    sender = parseaddr(email.message_from_bytes(raw, policy=policy.default)["From"])[1]
    answer = boto3.client("ses", region_name=region).send_raw_email(Source=sender, Destinations=[to],
                                                                   RawMessage={"Data": raw})
    return f"SES {answer['MessageId']} (from {sender})"

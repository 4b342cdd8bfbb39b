"""The bench's audience on a stepped runtime: signups through the real HTTP handlers, the
double opt-in confirmations, then opens and clicks on the links of the emails the funnels send
day after day (whatever tracking routes template.yaml has); and one sample request for every
route the audience did not reach."""
import itertools
import random
import re
import uuid
from email import message_from_bytes, policy
from pathlib import Path

_URL = re.compile(r"https?://[^\s\"'<>]+")


def email_urls(rt, path: Path | bytes) -> list[str]:
    """Paths (under the runtime's public URL) of the links in one sent email (a file or its
    bytes), in order."""
    mail = message_from_bytes(path if isinstance(path, bytes) else path.read_bytes(), policy=policy.default)
    text = " ".join(part.get_content() for part in mail.walk() if part.get_content_maintype() == "text")
    text += " " + str(mail.get("List-Unsubscribe", ""))
    base = rt.public_url.rstrip("/")
    return [u[len(base):].replace("&amp;", "&") for u in _URL.findall(text) if u.startswith(base + "/")]


def route_for(rt, method: str, path: str):
    return next((r for r in rt.routes if r.match(method, path.partition("?")[0]) is not None), None)


def honeypot(url: str) -> bool:
    """The hidden link only scanners follow (funnelpilot.channels.emails): no reader clicks it."""
    from funnelpilot import tokens

    fields = tokens.verify("c", url[3:].partition("?")[0], 3) if url.startswith("/c/") else None
    return bool(fields) and fields[2] == tokens.HONEYPOT


def _ip(i: int) -> str:
    """Each reader signs up from their own address (the per-IP signup limit is for list bombing)."""
    return f"10.8.{i // 250}.{i % 250 + 1}"


def signup(rt, i: int, rng: random.Random):
    form = {"email": f"bench{i}@example.com", "consent": "true", "first_name": f"Reader{i}",
            "utm_source": rng.choice(["ads", "partner"])}
    return rt.http("POST", "/signup", form=form, source_ip=_ip(i))


def _new_mails(seen: list) -> list[bytes]:
    """The emails SES accepted since the last call, in the order they were sent."""
    from funnelpilot_local.moto_adapter import sent_emails
    from funnelpilot_local.template import ACCOUNT, REGION

    sent = sent_emails(ACCOUNT, REGION)
    new = [raw.encode() if isinstance(raw, str) else raw for _, raw in sent[seen[0]:]]
    seen[0] = len(sent)
    return new


def _read(rt, mails: list[bytes], seed: int, counts: dict) -> None:
    """Each reader's response to their new emails (in sending order): the confirmation link
    always; the pixel of 70% of the others and the first tracked link of 40%, decided per
    recipient and subject (seeded), so every run makes the same requests."""
    agent = {"user-agent": "Mozilla/5.0 (bench)"}
    for raw in mails:
        mail = message_from_bytes(raw, policy=policy.default)
        urls = email_urls(rt, raw)
        confirm = next((u for u in urls if u.startswith("/confirm/")), None)
        if confirm:
            rt.http("GET", confirm, headers=agent, source_ip="198.51.100.23")
            continue
        to, subject = str(mail["To"]), str(mail["Subject"])
        counts[(to, subject)] = n = counts.get((to, subject), 0) + 1
        rng = random.Random(f"{seed}|{to}|{subject}|{n}")
        if rng.random() < 0.7:  # opens: any GET route that answers the pixel
            for url in urls:
                if route_for(rt, "GET", url) and url.startswith("/o/"):
                    rt.http("GET", url, headers=agent, source_ip="198.51.100.23")
        if rng.random() < 0.4:  # one click on the first tracked link
            for url in urls:
                if route_for(rt, "GET", url) and url.startswith("/c/") and not honeypot(url):
                    rt.http("GET", url, headers=agent, source_ip="198.51.100.23")
                    break
        rt.settle()


def audience(rt, contacts: int, seed: int = 8, days: int = 60) -> dict:
    """Drive a stepped runtime for ``days`` simulated days, reading the new emails after each
    day; returns {contact index: contact_id}."""
    rng = random.Random(seed)
    ids = {}
    for i in range(contacts):
        resp = signup(rt, i, rng)
        if resp.status < 300:
            ids[i] = resp.json()["contact_id"]
    rt.http("POST", "/signup", form={"email": "bench-double@example.com", "consent": "true", "list": "insiders"},
            source_ip=_ip(contacts))
    rt.settle()
    seen, counts = [0], {}
    for day in range(days + 1):
        _read(rt, _new_mails(seen), seed, counts)
        if day < days and not rt.advance(86_400):
            raise RuntimeError(f"bench audience: day {day} did not settle")
    return ids


def sample_request(rt, route, contact_id: str, n: int = 0) -> dict | None:
    """Arguments for rt.http() exercising ``route`` once (the ``n``-th sample: a new person, the
    link of the ``n``-th email having one), or None if no sample is known."""
    method, path = route.method, route.path
    headers = {"user-agent": "Mozilla/5.0 (bench)"}
    if getattr(route, "auth", None) == "AWS_IAM":
        headers["x-api-key"] = rt.admin_key
    if path == "/events" and method == "POST":
        return {"method": method, "path": path, "headers": {**headers, "x-api-key": rt.template.parameters.get(
            "EventsApiKey", "")}, "json_body": {"type": "page.viewed", "event_id": f"bench-{uuid.uuid4().hex}",
                                                 "contact_id": contact_id, "path": "/pricing"}}
    if "{id}" in path:
        filled = path.replace("{id}", "welcome" if path.startswith("/funnels/") else contact_id)
        return {"method": method, "path": filled, "headers": headers}
    if method == "OPTIONS":
        origin = rt.functions[route.function].env.get("CORS_ORIGINS", "").split(",")[0]
        return {"method": method, "path": path, "headers": {"origin": origin, "access-control-request-method": "POST"}}
    if path == "/signup":
        return {"method": method, "path": path, "json_body": {"email": f"sample{n}@example.com", "consent": True},
                "headers": headers, "source_ip": _ip(10_000 + n)}
    matching = (url for mail in _new_mails([0]) for url in email_urls(rt, mail)
                if route.match(method, url.partition("?")[0]) is not None and not honeypot(url))
    url = next(itertools.islice(matching, n, None), None)
    if url is not None:
        return {"method": method, "path": url, "headers": headers}
    if "{" not in path:
        return {"method": method, "path": path, "headers": headers}
    return None

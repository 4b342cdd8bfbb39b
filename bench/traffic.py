"""The bench's audience: signups through the real HTTP handlers, then opens and clicks on
the links of the emails the funnels sent (whatever tracking routes template.yaml has),
then one sample request on every route the audience did not reach."""
import random
import re
import uuid
from email import message_from_bytes, policy
from pathlib import Path

_URL = re.compile(r"https?://[^\s\"'<>]+")


def email_urls(rt, path: Path) -> list[str]:
    """Paths (under the runtime's public URL) of the links in one sent email, in order."""
    mail = message_from_bytes(path.read_bytes(), policy=policy.default)
    text = " ".join(part.get_content() for part in mail.walk() if part.get_content_maintype() == "text")
    text += " " + str(mail.get("List-Unsubscribe", ""))
    base = rt.public_url.rstrip("/")
    return [u[len(base):].replace("&amp;", "&") for u in _URL.findall(text) if u.startswith(base + "/")]


def route_for(rt, method: str, path: str):
    return next((r for r in rt.routes if r.match(method, path.partition("?")[0]) is not None), None)


def signup(rt, i: int, rng: random.Random):
    form = {"email": f"bench{i}@example.com", "consent": "true", "first_name": f"Reader{i}",
            "utm_source": rng.choice(["ads", "partner"])}
    return rt.http("POST", "/signup", form=form)


def audience(rt, contacts: int, seed: int = 8, rounds: int = 2) -> dict:
    """Drive the stack; returns {contact index: contact_id} and how many emails were read."""
    rng = random.Random(seed)
    ids = {}
    for i in range(contacts):
        resp = signup(rt, i, rng)
        if resp.status < 300:
            ids[i] = resp.json()["contact_id"]
    rt.http("POST", "/signup", form={"email": "bench-double@example.com", "consent": "true", "list": "insiders"})
    rt.settle(timeout=120)
    seen: set[Path] = set()
    for _ in range(rounds):
        mails = sorted(set(rt.outbox.glob("*.eml")) - seen)
        seen.update(mails)
        for path in mails:
            urls = email_urls(rt, path)
            if rng.random() < 0.7:  # opens: any GET route that answers the pixel
                for url in urls:
                    if route_for(rt, "GET", url) and url.startswith("/o/"):
                        rt.http("GET", url, headers={"user-agent": "Mozilla/5.0 (bench)"})
            if rng.random() < 0.4:  # one click on the first tracked link
                for url in urls:
                    if route_for(rt, "GET", url) and url.startswith("/c/"):
                        rt.http("GET", url, headers={"user-agent": "Mozilla/5.0 (bench)"})
                        break
        rt.settle(timeout=120)
    return ids


def sample_request(rt, route, contact_id: str) -> dict | None:
    """Arguments for rt.http() exercising ``route`` once, or None if no sample is known."""
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
        return {"method": method, "path": path, "json_body": {"email": "sample@example.com", "consent": True},
                "headers": headers}
    for mail in sorted(rt.outbox.glob("*.eml")):
        for url in email_urls(rt, mail):
            if route.match(method, url.partition("?")[0]) is not None:
                return {"method": method, "path": url, "headers": headers}
    if "{" not in path:
        return {"method": method, "path": path, "headers": headers}
    return None

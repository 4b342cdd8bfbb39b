"""``make demo``: a seeded audience lives 60 days with every shipped funnel, in a minute or two.

The local runtime runs in its stepped mode (time moves only when the simulation says so, and
every wait of every execution wakes in a fixed order), and every random choice of a person
is drawn from a generator seeded by (seed, person, what) rather than by call order, so the
same seed gives the same report. People act only through the real entry points: POST
/signup, the open pixel and click redirects (with Apple Mail Privacy Protection prefetches
and security scanners that must not count as human), POST /u (one-click unsubscribe), POST
/events (orders), and SES's delivery/bounce/complaint events on the default bus.
"""
import hashlib
import heapq
import json
import logging
import random
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path
from zoneinfo import ZoneInfo

from funnelpilot import clock, report, steering, tokens
from funnelpilot.steering import abtest, attribution
from funnelpilot_local import compiler
from funnelpilot_local import costs
from funnelpilot_local.runtime import ROOT, Runtime

START = datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC
HOUR, DAY = 3600, 86400
FIRST_NAMES = ["Ada", "Ben", "Chloé", "Dev", "Eun-ji", "Femi", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena",
               "Mia", "Nils", "Olu", "Pia", "Quinn", "Rosa", "Sami", "Tove"]
SOURCES = [({"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring"}, 30),
           ({"utm_source": "facebook", "utm_medium": "paid_social", "utm_campaign": "guide"}, 25),
           ({"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "partner-swap"}, 15),
           ({"utm_source": "linkedin", "utm_medium": "social"}, 10),
           ({"utm_source": "(direct)"}, 20)]
# Engagement profiles: share of the audience, chance to open an email, to click once opened, to buy after a click.
PROFILES = {"engaged": (0.25, 0.65, 0.45, 0.30), "casual": (0.45, 0.30, 0.20, 0.10),
            "dormant": (0.30, 0.06, 0.10, 0.02)}
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
]
APPLE_PROXY = "Mozilla/5.0"  # Apple Mail Privacy Protection fetches every image, read or not
SCANNER = "Mozilla/5.0 (compatible; Mimecast URL Protect)"
LINK = re.compile(r"http://127\.0\.0\.1:3000(/[oc]/[A-Za-z0-9_\-.]+)")
CONFIRM = re.compile(r"http://127\.0\.0\.1:3000(/confirm/[A-Za-z0-9_\-.]+)")
CONFIRMS = 0.9  # share of people who click the double opt-in link (the others never hear from us again)
PHONES, SMS_CONSENTS = 0.5, 0.8  # share giving a mobile number at signup; of those, share ticking the SMS box
# Buyers: what each price buys (segments.yaml's core-course-buyers); a share of the audience buys
# again on a rhythm of its own (the second order comes by itself: the repurchase funnel then
# reminds them when the third is due, and the win-back writes to those whose next one never comes).
PRODUCTS = {29: "starter-kit", 49: "templates", 99: "core-course", 199: "coaching"}
REPEAT_BUYERS = 0.35
MAX_ORDERS = 4
REMINDED_BUYS = 0.5  # a repeat buyer who clicks the reminder of an order that is due buys
# The newsletter (with its A/B subject test): created through the admin route on the eve of the middle
# day, scheduled for 09:00 Berlin time that day.
BROADCAST = ROOT / "infra" / "broadcasts" / "december-news.yaml"
BROADCAST_ZONE = "Europe/Berlin"


@dataclass
class Person:
    email: str
    first_name: str
    utm: dict
    lead_magnet: str | None
    signup_at: float
    profile: str
    apple_mail: bool  # opens arrive through Apple's proxy: never counted as human
    scanner: bool  # a corporate gateway follows every link on delivery
    bounces: bool  # the address does not exist
    quiet_after: float  # from then on this person reads (almost) nothing
    interest: int  # which topic link they pick
    phone: str | None = None  # given at signup (a fictional 555-01xx number), SMS consent ticked or not
    sms_consent: bool = False
    rhythm: float | None = None  # a repeat buyer orders again every this many seconds (their own interval)
    emails: int = 0
    orders: int = 0
    unsubscribed: bool = False


def rng_for(seed: int, *parts) -> random.Random:
    """A generator per (seed, person, decision): results do not depend on the order of calls."""
    return random.Random("|".join(map(str, (seed, *parts))))


def audience(seed: int, size: int, days: int) -> list[Person]:
    people = []
    for i in range(size):
        r = rng_for(seed, "person", i)
        profile = r.choices(list(PROFILES), weights=[p[0] for p in PROFILES.values()])[0]
        signup_at = START + r.uniform(0, days * 0.5) * DAY
        people.append(Person(
            email=f"reader{i:04d}@example.com", first_name=r.choice(FIRST_NAMES),
            utm=r.choices([s for s, _ in SOURCES], weights=[w for _, w in SOURCES])[0],
            lead_magnet="starter-guide" if r.random() < 0.6 else None, signup_at=signup_at, profile=profile,
            apple_mail=r.random() < 0.35, scanner=r.random() < 0.08, bounces=r.random() < 0.02,
            quiet_after=signup_at + r.uniform(7, 40) * DAY, interest=r.randrange(3),
            rhythm=r.uniform(8, 16) * DAY if r.random() < REPEAT_BUYERS else None))
        sms = rng_for(seed, "phone", i)  # a generator of its own: the draws above stay what they were
        if sms.random() < PHONES:
            people[-1].phone, people[-1].sms_consent = f"+1415555{100 + i % 100:04d}", sms.random() < SMS_CONSENTS
    return people


@dataclass(order=True)
class Action:
    at: float
    seq: int
    kind: str = field(compare=False)
    data: dict = field(compare=False, default_factory=dict)


class Simulation:
    def __init__(self, rt: Runtime, people: list[Person], seed: int):
        self.rt, self.people, self.seed = rt, people, seed
        self.by_email = {p.email: p for p in people}
        self.queue: list[Action] = []
        self._seq = 0
        self._sent_seen = 0  # moto's SES messages read (moto_adapter.sent_emails_since)
        self.tally = {"signups": 0, "confirmations": 0, "emails": 0, "opens": 0, "mpp": 0, "clicks": 0,
                      "scanner": 0, "orders": 0, "unsubscribes": 0, "bounces": 0, "complaints": 0}
        self.events_key = rt.template.parameters.get("EventsApiKey", "")
        self.broadcast: str | None = None  # its id, once created
        for i, p in enumerate(people):
            self.at(p.signup_at, "signup", person=p)
            r = rng_for(seed, p.email, "organic-order")
            if r.random() < PROFILES[p.profile][3] / 3:  # some buy without any email
                self.at(p.signup_at + r.uniform(3, 50) * DAY, "order", person=p)

    def at(self, when: float, what: str, **data) -> None:
        self._seq += 1
        heapq.heappush(self.queue, Action(when, self._seq, what, data))

    # ---------------------------------------------------------------- what people do
    def signup(self, p: Person) -> None:
        form = {"email": p.email, "first_name": p.first_name, "consent": "true", **p.utm}
        if p.lead_magnet:
            form["lead_magnet"] = p.lead_magnet
        if p.phone:
            form |= {"phone": p.phone, **({"sms_consent": "on"} if p.sms_consent else {})}
        # each from their own address (the signup limit per IP is for list bombing, not for an audience)
        digest = hashlib.sha256(p.email.encode()).digest()
        ip = f"10.{digest[0]}.{digest[1]}.{digest[2] or 1}"
        status = self.rt.http("POST", "/signup", form=form, source_ip=ip).status
        self.tally["signups"] += status in (200, 202, 303)

    def send_broadcast(self, day: int) -> None:
        """The example broadcast as `funnelpilot broadcast create` and `schedule --at` send it."""
        from funnelpilot_local.broadcast_cli import Source

        admin = {"x-api-key": self.rt.admin_key}
        made = self.rt.http("POST", "/broadcasts", json_body=Source(BROADCAST).inlined(), headers=admin)
        if made.status != 201:
            self.rt.errors.append(f"broadcast create: {made.status} {made.body[:200]!r}")
            return
        self.broadcast = made.json()["id"]
        at = datetime.fromtimestamp(START + day * DAY, timezone.utc).replace(hour=9, tzinfo=ZoneInfo(BROADCAST_ZONE))
        done = self.rt.http("POST", f"/broadcasts/{self.broadcast}/schedule", json_body={"at": at.isoformat()},
                            headers=admin)
        if done.status != 200:
            self.rt.errors.append(f"broadcast schedule: {done.status} {done.body[:200]!r}")

    def broadcast_report(self) -> dict | None:
        if self.broadcast is None:
            return None
        return self.rt.http("GET", f"/broadcasts/{self.broadcast}/report", headers={"x-api-key": self.rt.admin_key}).json()

    def hit(self, path: str, user_agent: str, ip: str) -> int:
        return self.rt.http("GET", path, headers={"user-agent": user_agent}, source_ip=ip).status

    def order(self, p: Person) -> None:
        if p.orders >= MAX_ORDERS or p.orders >= 2 and not p.rhythm:
            return
        p.orders += 1
        r = rng_for(self.seed, p.email, "order", p.orders)
        amount = r.choice(list(PRODUCTS))
        body = {"type": "order.placed", "event_id": f"order-{p.email.split('@')[0]}-{p.orders}", "email": p.email,
                "order_id": f"{p.email.split('@')[0]}-{p.orders}", "amount": amount, "currency": "EUR",
                "items": [{"sku": PRODUCTS[amount], "quantity": 1, "price": amount}]}
        status = self.rt.http("POST", "/events", json_body=body, headers={"x-api-key": self.events_key}).status
        self.tally["orders"] += status == 202
        if p.rhythm and p.orders == 1:  # the repeat order comes by itself; later ones answer the reminder
            self.at(_now() + p.rhythm * r.uniform(0.9, 1.1), "order", person=p)

    def ses(self, kind: str, p: Person, mail: dict) -> None:
        """What SES puts on the default bus through the configuration set's event destination."""
        detail = {"eventType": kind, "mail": {
            "timestamp": mail["sent_iso"], "source": "hello@example.com", "messageId": mail["ses_id"],
            "destination": [p.email], "headers": [{"name": "X-Funnelpilot-Message-Id", "value": mail["id"]}],
            "tags": {"ses:configuration-set": ["EmailConfigurationSet"]}}}
        now = clock.iso()
        if kind == "Delivery":
            detail["delivery"] = {"timestamp": now, "recipients": [p.email], "smtpResponse": "250 2.0.0 OK"}
            detail_type = "Email Delivered"
        elif kind == "Bounce":
            detail["bounce"] = {"bounceType": "Permanent", "bounceSubType": "General", "timestamp": now,
                                "feedbackId": f"fb-{mail['id']}",
                                "bouncedRecipients": [{"emailAddress": p.email, "status": "5.1.1"}]}
            detail_type = "Email Bounced"
            self.tally["bounces"] += 1
        else:
            detail["complaint"] = {"timestamp": now, "feedbackId": f"fc-{mail['id']}",
                                   "complainedRecipients": [{"emailAddress": p.email}],
                                   "complaintFeedbackType": "abuse"}
            detail_type = "Email Complaint Received"
            self.tally["complaints"] += 1
        self.rt.client("events").put_events(Entries=[{"Source": "aws.ses", "DetailType": detail_type,
                                                      "Detail": json.dumps(detail)}])

    def react(self, p: Person, mail: dict, sent_at: float) -> None:
        """Decide, once per email, everything this person (and their mail system) will do with it."""
        p.emails += 1
        r = rng_for(self.seed, p.email, "email", p.emails, mail["subject"])
        if p.bounces:
            self.at(sent_at + 60, "ses", kind="Bounce", person=p, mail=mail)
            return
        self.at(sent_at + 30, "ses", kind="Delivery", person=p, mail=mail)
        if r.random() < 0.001:
            self.at(sent_at + r.uniform(1, 48) * HOUR, "ses", kind="Complaint", person=p, mail=mail)
        if p.apple_mail:
            self.at(sent_at + r.uniform(2, 30) * 60, "mpp", path=mail["pixel"])
        if p.scanner:
            for i, path in enumerate(mail["links"] + mail["honeypot"]):
                self.at(sent_at + 45 + i, "scan", path=path)
        _, p_open, p_click, p_buy = PROFILES[p.profile]
        if sent_at > p.quiet_after:
            p_open /= 10
        if r.random() >= p_open:
            if sent_at > p.quiet_after and r.random() < 0.01:
                self.at(sent_at + r.uniform(1, 72) * HOUR, "unsubscribe", person=p, mail=mail)
            return
        opened = sent_at + min(r.expovariate(1 / (6 * HOUR)), 4 * DAY) + 600
        browser = r.choice(BROWSERS)
        self.at(opened, "open", path=mail["pixel"], agent=APPLE_PROXY if p.apple_mail else browser,
                ip="17.58.63.9" if p.apple_mail else "198.51.100.23")
        if mail["links"] and r.random() < p_click:
            link = mail["links"][p.interest % len(mail["links"])]
            clicked = opened + r.uniform(0.5, 15) * 60
            self.at(clicked, "click", path=link, agent=browser)
            if p.rhythm and "next order" in mail["subject"] and r.random() < REMINDED_BUYS:
                self.at(clicked + r.uniform(0.2, 30) * HOUR, "order", person=p)  # the repurchase reminder worked
            elif r.random() < p_buy:
                self.at(clicked + r.uniform(0.2, 30) * HOUR, "order", person=p)
        elif r.random() < 0.004:
            self.at(opened + 120, "unsubscribe", person=p, mail=mail)

    def do(self, a: Action) -> None:
        d = a.data
        if a.kind == "signup":
            self.signup(d["person"])
        elif a.kind == "confirm":
            self.tally["confirmations"] += self.hit(d["path"], d["agent"], "198.51.100.23") == 200
        elif a.kind == "open":
            self.tally["opens"] += self.hit(d["path"], d["agent"], d["ip"]) == 200
        elif a.kind == "mpp":
            self.tally["mpp"] += self.hit(d["path"], APPLE_PROXY, "17.58.63.10") == 200
        elif a.kind == "click":
            self.tally["clicks"] += self.hit(d["path"], d["agent"], "198.51.100.23") in (200, 302)
        elif a.kind == "scan":
            self.tally["scanner"] += self.hit(d["path"], SCANNER, "203.0.113.50") in (200, 302)
        elif a.kind == "order":
            self.order(d["person"])
        elif a.kind == "unsubscribe" and not d["person"].unsubscribed:
            d["person"].unsubscribed = True
            status = self.rt.http("POST", d["mail"]["unsubscribe"], form={"List-Unsubscribe": "One-Click"}).status
            self.tally["unsubscribes"] += status == 200
        elif a.kind == "ses":
            self.ses(d["kind"], d["person"], d["mail"])
        elif a.kind == "broadcast":
            self.send_broadcast(d["day"])
        self.rt.settle()

    def new_emails(self) -> None:
        """Emails SES accepted since the last look: each reader decides what to do with it."""
        from funnelpilot_local.moto_adapter import sent_emails_since
        from funnelpilot_local.template import ACCOUNT, REGION

        sent, self._sent_seen = sent_emails_since(ACCOUNT, REGION, self._sent_seen)
        now = _now()
        for ses_id, raw in sent:
            mail = message_from_bytes(raw.encode() if isinstance(raw, str) else raw, policy=policy.default)
            p = self.by_email.get(mail["To"])
            if p is None:  # internal alerts to sales
                continue
            self.tally["emails"] += 1
            html = mail.get_body(("html",)).get_content()
            confirm = CONFIRM.search(html)
            if confirm and not p.bounces:  # the double opt-in email: most people click it within the hour
                r = rng_for(self.seed, p.email, "confirm", p.emails)
                p.emails += 1
                if r.random() < CONFIRMS:
                    self.at(now + r.uniform(1, 60) * 60, "confirm", path=confirm.group(1), agent=r.choice(BROWSERS))
                continue
            paths = LINK.findall(html)
            unsubscribe = re.match(r"<http://127\.0\.0\.1:3000(/u/[^>]+)>", mail["List-Unsubscribe"] or "")
            clicks = [(q, tokens.verify("c", q[3:], 3)) for q in paths if q.startswith("/c/")]
            self.react(p, {"id": mail["X-Funnelpilot-Message-Id"], "ses_id": ses_id, "subject": mail["Subject"],
                           "sent_iso": clock.iso(), "pixel": next((q for q in paths if q.startswith("/o/")), None),
                           "links": [q for q, f in clicks if f and f[2] != "h"],
                           "honeypot": [q for q, f in clicks if f and f[2] == "h"],
                           "unsubscribe": unsubscribe.group(1) if unsubscribe else None}, now)

    # ---------------------------------------------------------------- the clock
    def run(self, days: int, progress) -> None:
        end = START + days * DAY
        day = 0
        while True:
            self.new_emails()
            next_at = self.queue[0].at if self.queue else end
            horizon = min(next_at, end, START + (day + 1) * DAY)
            if not self.rt.advance(max(0.0, horizon - _now())):
                self.rt.errors.append(f"day {day}: the runtime did not settle")
            if _now() >= START + (day + 1) * DAY:
                day += 1
                progress(day, days, self.tally)
            if _now() >= end:
                self.new_emails()
                return
            while self.queue and self.queue[0].at <= _now():
                action = heapq.heappop(self.queue)
                if action.kind in ("open", "mpp", "click", "scan") and not action.data["path"]:
                    continue
                if action.kind == "unsubscribe" and not action.data["mail"]["unsubscribe"]:
                    continue
                self.do(action)
                self.new_emails()


def _now() -> float:
    return clock.now()


def journeys(rt: Runtime) -> list[dict]:
    """Per funnel: executions, state transitions and Lambda tasks per contact (from the
    execution histories: what Step Functions bills)."""
    from funnelpilot_local import moto_adapter
    from funnelpilot_local.template import ACCOUNT, REGION

    rows = []
    for funnel in report.known_funnels(rt.root / "infra"):
        arn = rt.template.physical[compiler.logical_id(funnel)]
        transitions, tasks = [], []
        for types in moto_adapter.execution_event_types(ACCOUNT, REGION, arn):
            transitions.append(sum(1 for t in types if t.endswith("StateEntered")))
            tasks.append(sum(1 for t in types if t in ("LambdaFunctionScheduled", "TaskScheduled")))
        rows.append({"funnel": funnel, "executions": len(transitions),
                     "transitions": sum(transitions) / len(transitions) if transitions else None,
                     "max": max(transitions, default=None),
                     "tasks": sum(tasks) / len(tasks) if tasks else None})
    return rows


def progress_bar(stream=sys.stderr):
    started = time.monotonic()

    def show(day: int, days: int, tally: dict) -> None:
        width = 30
        done = int(width * day / days)
        line = (f"\r  [{'#' * done}{'.' * (width - done)}] day {day:>2}/{days}  signups {tally['signups']}  "
                f"emails {tally['emails']}  opens {tally['opens']}  clicks {tally['clicks']}  "
                f"orders {tally['orders']}  {time.monotonic() - started:.0f}s")
        if stream.isatty():
            stream.write(line)
            if day == days:
                stream.write("\n")
        elif day % 10 == 0 or day == days:
            stream.write(line.lstrip("\r") + "\n")
        stream.flush()

    return show


EXAMPLE_WEBHOOKS = ROOT / "infra" / "examples" / "webhooks.yaml"  # order.placed -> a CRM


def demo_template(state_dir: Path) -> Path:
    """template.yaml with the example webhook subscription (infra/examples/webhooks.yaml) added."""
    from funnelpilot.channels import webhooks

    path = state_dir / "demo-template.yaml"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(compiler.with_webhooks((ROOT / "template.yaml").read_text(), webhooks.load(EXAMPLE_WEBHOOKS)))
    return path


def simulate(seed: int = 7, contacts: int = 200, days: int = 60, state_dir: Path | None = None,
             progress=None, with_journeys: bool = False, broadcast: bool = False) -> dict:
    """Run the simulation; returns {reports, tally, usage, outbox, errors, broadcast: (id, report)}.
    ``broadcast``: send the example broadcast on the middle day (`make demo` does; the bench's
    per-email figures and `funnelpilot cost`'s own measurement are of the funnels alone)."""
    # moto logs every task-token timeout (a wait_for that ran out: normal here) at ERROR level
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    state_dir = Path(state_dir or ROOT / ".local")
    with Runtime(stepped=True, start=START, state_dir=state_dir, log_level="ERROR",
                 template=demo_template(state_dir)) as rt:
        for old in (*rt.outbox.glob("*.eml"), *rt.api_destinations.outbox.glob("*.json"),
                    *(rt.state_dir / "outbox-sms").glob("*.json")):
            old.unlink()
        meter = costs.Meter(rt)
        with meter:
            sim = Simulation(rt, audience(seed, contacts, days), seed)
            if broadcast:
                sim.at(START + (days // 2 - 0.5) * DAY, "broadcast", day=days // 2)
            sim.run(days, progress or (lambda *a: None))
        start, end = report.day_range(datetime.fromtimestamp(START, timezone.utc).date().isoformat(),
                                      datetime.fromtimestamp(_now() - 1, timezone.utc).date().isoformat())
        funnels = report.known_funnels(rt.root / "infra")
        rows = {f: report.query_rows(f, start, end) for f in [*funnels, attribution.UNATTRIBUTED]}
        reports = [report.build(f, rows[f], start, end, report.step_order(f, rt.root / "infra"),
                                abtest.splits(f, rt.root / "infra")) for f in funnels]
        usage = meter.usage(contacts=contacts, days=days)
        return {"reports": reports, "rows": rows, "tally": sim.tally, "usage": usage, "outbox": rt.outbox,
                "broadcast": (sim.broadcast, sim.broadcast_report()),
                "webhooks": [(a.url, a.status, a.outbox) for a in rt.api_destinations.attempts],
                "errors": list(rt.errors), "state_dir": rt.state_dir,
                "journeys": journeys(rt) if with_journeys else None}


def run(seed: int = 7, contacts: int = 200, days: int = 60) -> int:
    started = time.monotonic()
    print(f"funnelpilot demo: {contacts} simulated contacts, {days} days of funnels on the local runtime "
          f"(template.yaml on moto), seed {seed}")
    result = simulate(seed, contacts, days, progress=progress_bar(), broadcast=True)
    state = result["state_dir"]
    snapshot = state / "metrics.json"
    snapshot.write_text(json.dumps({"rows": result["rows"], "start": result["reports"][0]["from"] if result["reports"]
                                    else None, "end": result["reports"][0]["to"] if result["reports"] else None},
                                   indent=1, sort_keys=True))
    chart = state / "funnels.html"
    title = f"funnelpilot demo (seed {seed}, {contacts} contacts, {days} days)"
    chart.write_text(report.chart_html(result["reports"], title=title))
    (state / "funnels.svg").write_text(report.chart_svg(result["reports"], title=title))
    (state / "usage.json").write_text(json.dumps(result["usage"], indent=1, sort_keys=True))
    print()
    for rep in result["reports"]:
        if rep["entered"] or rep["steps"]:
            print(report.table(rep))
            print()
    print(report.revenue_summary(result["reports"], result["rows"][attribution.UNATTRIBUTED],
                                 steering.settings(ROOT / "infra")["attribution_window_days"]))
    print()
    bid, sent = result["broadcast"]
    if sent is not None:
        from funnelpilot_local.broadcast_cli import report_table

        print(report_table(bid, sent))
        print()
    t = result["tally"]
    print(f"audience: {t['signups']} signups ({t['confirmations']} confirmed), {t['opens']} opens and {t['clicks']} clicks by people, "
          f"{t['mpp']} Apple MPP prefetches and {t['scanner']} scanner hits (not human), {t['orders']} orders, "
          f"{t['unsubscribes']} unsubscribes, {t['bounces']} bounces, {t['complaints']} complaints")
    print(f"chart:    {chart} (and funnels.svg)")
    print(f"outbox:   {result['outbox']}/ ({len(list(result['outbox'].glob('*.eml')))} emails)")
    written = [path for _, _, path in result["webhooks"] if path]
    if result["webhooks"]:
        first = json.loads(written[0].read_text())["body"] if written else {}
        print(f"webhooks: {len(result['webhooks'])} deliveries to "
              f"{', '.join(sorted({url for url, _, _ in result['webhooks']}))}"
              + (f", written to {written[0].parent}/ (the first: {first.get('type')} of contact "
                 f"{first.get('contact_id')}, with {', '.join(first.get('contact') or {}) or 'no personal data'})"
                 if written else ""))
    texts = [json.loads(p.read_text()) for p in sorted((state / "outbox-sms").glob("*.json"))]
    print(f"sms:      {state / 'outbox-sms'}/ ({len(texts)} texts, AWS End User Messaging SMS answered locally)")
    for text in sorted(texts, key=lambda t: t["sent_at"])[:3]:
        print(f"  {text['sent_at'][:16]} to {text['DestinationPhoneNumber']}: {text['MessageBody']!r}")
    print(f"snapshot: {snapshot} (funnelpilot report reads it)")
    print()
    for size in (1_000, 10_000):
        print(costs.format_estimate(costs.estimate(result["usage"], contacts=size)) + "\n")
    if result["errors"]:
        print("errors:", json.dumps(result["errors"][:20], indent=2))
        return 1
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    return 0

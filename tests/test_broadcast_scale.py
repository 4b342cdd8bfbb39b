"""Issue 14 item 4: a 10,000-recipient broadcast end to end on the strict runtime, SES in production at
14 emails a second: every recipient gets exactly one email (SES's own record of sends), and the last one
leaves within 1.10 x the physical floor (recipients / rate) on the stepped clock."""
import email
import re
import time
from collections import Counter
from email import policy

from test_broadcasts import spec

from funnelpilot import aws, broadcasts, clock, tokens
from funnelpilot.audience import importer
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.template import ACCOUNT, REGION

RECIPIENTS, RATE = 10_000, 14
TO = re.compile(r"^To: (.+?)\r?$", re.MULTILINE)


def seed(n: int) -> list[str]:
    """``n`` subscribers of the newsletter: the importer's own items for a new person (its profile and
    list membership; not the consent record, which nothing here reads), in BatchWriteItem calls."""
    batch = {"file": "seed.csv", "imported_at": "2026-03-01", "list": "newsletter", "mapping": {}}
    items, addresses = [], []
    for i in range(n):
        row = importer.parse_row({"email": f"r{i}@example.com", "first_name": f"R{i}"}, {}, "newsletter")
        cid = tokens.contact_id(row.email)
        items += [a["Put"]["Item"] for a in importer._plan(row, cid, None, batch)
                  if "Put" in a and not a["Put"]["Item"]["sk"]["S"].startswith("CONSENT#")]
        addresses.append(row.email)
    aws.batch_write([{"PutRequest": {"Item": item}} for item in items])
    return addresses


def test_ten_thousand_recipients_at_the_ses_rate_none_lost_none_twice(rt):
    began = time.monotonic()
    addresses = seed(RECIPIENTS)
    seeded = time.monotonic()
    broadcasts.create(spec(name="big-news", frequency_cap="ignore"))  # the cap's write: tests/test_broadcast_flow.py
    start = clock.now()
    broadcasts.schedule("big-news", {"now": True})
    floor = RECIPIENTS / RATE
    assert rt.advance(1.10 * floor)
    sent = sent_emails(ACCOUNT, REGION)
    sends = Counter(TO.search(raw if isinstance(raw, str) else raw.decode()).group(1) for _sid, raw in sent)
    last = email.message_from_string(sent[-1][1] if isinstance(sent[-1][1], str) else sent[-1][1].decode(),
                                     policy=policy.default)["Date"].datetime.timestamp()  # SES took them in order
    assert sends == Counter({a: 1 for a in addresses})  # 0 lost, 0 duplicated
    report = broadcasts.report("big-news")
    assert (report["status"], report["sent"], report["audience"], report["processed"]) == (
        "sent", RECIPIENTS, RECIPIENTS, RECIPIENTS)
    assert last - start <= 1.10 * floor, (last - start, floor)
    print(f"\n10,000 recipients: finished {last - start:.0f} s after the send (floor {floor:.0f} s, "
          f"{(last - start) / floor:.3f} x); seeding {seeded - began:.0f} s, broadcast {time.monotonic() - seeded:.0f} s wall")

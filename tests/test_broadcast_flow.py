"""A broadcast over time on the strict runtime (stepped clock, SES at 14 a second): pause and resume,
cancel, the A/B test's sample then winner, local-time waves, and what a redelivered or crashed chunk does."""
import re
from datetime import datetime, timezone

import pytest
from botocore.exceptions import ClientError
from conftest import START
from test_broadcasts import BROWSER, broadcast_emails, people, run, seed, sent_to, spec

from funnelpilot import broadcasts, clock
from funnelpilot.channels import emails
from funnelpilot_local import broadcast_cli
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.runtime import ROOT, Runtime

HOUR = 3600


def total(rt, bid: str) -> int:
    return sum(sent_to(rt, bid).values())


def started(rt, n: int = 120) -> int:
    """``n`` subscribers, the broadcast sent now; what its first instant sent."""
    seed(people(n))
    broadcasts.create(spec())
    broadcasts.schedule("march-news", {"now": True})
    assert rt.settle()
    return total(rt, "march-news")


def test_pause_stops_sending_and_resume_finishes_once_each(rt):
    first = started(rt)
    assert 0 < first <= 14  # the first second's slots
    assert broadcasts.pause("march-news")["status"] == "paused"
    with pytest.raises(broadcasts.NotAllowed):
        broadcasts.pause("march-news")
    assert rt.advance(HOUR)
    assert total(rt, "march-news") == first  # nothing while paused: the chunks are held
    assert broadcasts.report("march-news")["status"] == "paused"
    assert broadcasts.resume("march-news")["status"] == "sending"
    run(rt, 60)
    assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(120)}
    report = broadcasts.report("march-news")
    assert (report["status"], report["sent"], report["audience"]) == ("sent", 120, 120)


def test_cancel_stops_for_good(rt):
    first = started(rt)
    assert broadcasts.cancel("march-news")["status"] == "cancelled"
    with pytest.raises(broadcasts.NotAllowed):
        broadcasts.resume("march-news")
    run(rt, HOUR)
    assert total(rt, "march-news") == first
    report = broadcasts.report("march-news")
    assert report["status"] == "cancelled" and report["sent"] == first
    assert report["skipped_reasons"] == {"cancelled": 120 - first}


def test_a_scheduled_time_sends_then_and_a_new_time_replaces_it(rt):
    seed(people(3))
    broadcasts.create(spec())
    at = datetime.fromtimestamp(START + 5 * HOUR, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(Exception) as err:
        broadcasts.schedule("march-news", {"at": "2020-01-01T00:00:00Z"})
    assert getattr(err.value, "field", None) == "at"
    assert broadcasts.schedule("march-news", {"at": at})["status"] == "scheduled"
    later = datetime.fromtimestamp(START + 8 * HOUR, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    run(rt, HOUR)
    assert broadcasts.schedule("march-news", {"at": later})["status"] == "scheduled"  # moved
    run(rt, 5 * HOUR)
    assert total(rt, "march-news") == 0  # the first time is gone
    run(rt, 3 * HOUR)
    assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(3)}
    [msg] = broadcast_emails(rt, "march-news")["p0@example.com"]
    assert msg["Date"].datetime.timestamp() == START + 8 * HOUR


def test_ab_sample_then_the_winner_to_everyone_else(rt):
    seed(people(200))
    broadcasts.create({k: v for k, v in spec().items() if k != "subject"} | {"ab": {"subjects": {"a": "Plain subject", "b": "Better subject"},
                                                   "sample_percent": 20, "wait_hours": 1, "metric": "clicks"}})
    broadcasts.schedule("march-news", {"now": True})
    run(rt, 60)
    sample = broadcast_emails(rt, "march-news")
    by_subject = {}
    for to, [msg] in sample.items():
        by_subject.setdefault(msg["Subject"], []).append(msg)
    assert set(by_subject) == {"Plain subject", "Better subject"}
    assert 25 <= len(sample) <= 55 and min(len(v) for v in by_subject.values()) >= 10  # ~20%, split evenly
    run(rt, 600)
    for msg in by_subject["Better subject"][:6]:  # b's readers click; a's do not
        html = msg.get_body(("html",)).get_content()
        path = re.search(r'http://127\.0\.0\.1:3000(/c/[A-Za-z0-9_.=-]+)"[^>]*>Read', html).group(1)
        assert rt.http("GET", path, headers={"user-agent": BROWSER}, source_ip="198.51.100.23").status == 302
    run(rt, 2 * HOUR)
    everyone = broadcast_emails(rt, "march-news")
    assert {to: len(m) for to, m in everyone.items()} == {f"p{i}@example.com": 1 for i in range(200)}
    rest = [m for to, [m] in everyone.items() if to not in sample]
    assert {m["Subject"] for m in rest} == {"Better subject"}
    report = broadcasts.report("march-news")
    assert report["status"] == "sent" and report["winner"] == "b" and report["sent"] == 200
    assert report["variants"]["b"]["clicks_human"] == 6 and report["variants"]["a"]["clicks_human"] == 0
    assert report["variants"]["a"]["sent"] == len(by_subject["Plain subject"])
    assert report["variants"]["b"]["sent"] == 200 - len(by_subject["Plain subject"])
    decision = report["decision"]  # what the winner was judged on: the sample, at the time
    assert (decision["metric"], decision["by"]) == ("clicks", "clicks")
    assert {v: (c["sent"], c["clicks"]) for v, c in decision["sample"].items()} == {
        "a": (len(by_subject["Plain subject"]), 0), "b": (len(by_subject["Better subject"]), 6)}


def opened(rt, messages: list) -> None:
    for msg in messages:
        html = msg.get_body(("html",)).get_content()
        path = re.search(r'http://127\.0\.0\.1:3000(/o/[A-Za-z0-9_.=-]+)"', html).group(1)
        assert rt.http("GET", path, headers={"user-agent": BROWSER}, source_ip="198.51.100.23").status == 200


@pytest.mark.parametrize("opens", [{"b": 3}, {}], ids=["opens-decide", "tie"])
def test_an_ab_tie_on_clicks_is_judged_on_opens_then_goes_to_the_first(rt, opens):
    """Nobody clicked in the sample: the winner is the variant more people opened, and the report says so;
    nobody opened either: the first variant, recorded as a tie."""
    subjects = {"a": "Plain subject", "b": "Better subject"}
    seed(people(100))
    broadcasts.create({k: v for k, v in spec().items() if k != "subject"}
                      | {"ab": {"subjects": subjects, "sample_percent": 40, "wait_hours": 1, "metric": "clicks"}})
    broadcasts.schedule("march-news", {"now": True})
    run(rt, 600)
    for variant, n in opens.items():
        opened(rt, [m for [m] in broadcast_emails(rt, "march-news").values() if m["Subject"] == subjects[variant]][:n])
    run(rt, 2 * HOUR)
    report = broadcasts.report("march-news")
    assert report["status"] == "sent" and report["sent"] == 100
    decision, table = report["decision"], broadcast_cli.report_table("march-news", report)
    if opens:
        assert (report["winner"], decision["by"]) == ("b", "opens")
        assert decision["sample"]["b"]["opens"] == 3 and decision["sample"]["a"]["opens"] == 0
        assert "A/B winner: b, on human opens (clicks were tied), in the sample at " in table, table
    else:
        assert (report["winner"], decision["by"]) == ("a", "tie")
        assert "A/B winner: a, a tie on clicks and opens: the first variant, in the sample at " in table, table


def test_local_time_waves_in_each_zone_and_the_fallback(rt):
    seed(people(3, "berlin", timezone="Europe/Berlin") + people(3, "ny", timezone="America/New_York")
         + people(3, "nozone"))
    broadcasts.create(spec())
    when = {"local": "09:00", "date": "2026-03-03", "fallback_zone": "Asia/Tokyo"}
    with pytest.raises(Exception) as err:
        broadcasts.schedule("march-news", {**when, "fallback_zone": "Mars/Base"})
    assert getattr(err.value, "field", None) == "fallback_zone"
    broadcasts.schedule("march-news", when)
    run(rt, 20 * HOUR)  # to 06:00 UTC on the 3rd: Tokyo's 09:00 (00:00 UTC) has come
    assert set(sent_to(rt, "march-news")) == {f"nozone{i}@example.com" for i in range(3)}
    run(rt, 10 * HOUR)  # 16:00 UTC: Berlin (08:00 UTC) and New York (14:00 UTC)
    emails_by = broadcast_emails(rt, "march-news")
    assert {to: len(m) for to, m in emails_by.items()} == {
        f"{z}{i}@example.com": 1 for z in ("berlin", "ny", "nozone") for i in range(3)}
    utc = {to: m[0]["Date"].datetime.astimezone(timezone.utc).strftime("%d %H:%M") for to, m in emails_by.items()}
    assert {utc[f"{z}0@example.com"] for z in ("nozone", "berlin", "ny")} == {"03 00:00", "03 08:00", "03 14:00"}
    assert utc["nozone0@example.com"] == "03 00:00" and utc["berlin1@example.com"] == "03 08:00"
    assert utc["ny2@example.com"] == "03 14:00"
    assert broadcasts.report("march-news")["status"] == "sent"


# ---------------------------------------------------------------- duplicates and failures
def test_a_redelivered_chunk_sends_nothing_twice(rt):
    seed(people(20))
    broadcasts.create(spec())
    received, original = [], rt.invoke

    def invoke(function, event):  # what the SQS event source mapping hands the worker
        if function == "BroadcastSendFunction":
            received.append(event)
        return original(function, event)

    rt.invoke = invoke
    broadcasts.schedule("march-news", {"now": True})
    run(rt, 30)
    before = broadcasts.report("march-news")
    assert before["sent"] == 20 and received
    for event in list(received):  # SQS delivers at least once: the same messages again
        assert rt.invoke("BroadcastSendFunction", event) == {"batchItemFailures": []}
    run(rt, 30)
    assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(20)}
    after = broadcasts.report("march-news")
    assert (after["sent"], after["processed"], after["audience"]) == (20, before["processed"], 20)


def test_a_crash_mid_chunk_sends_the_rest_once(rt, monkeypatch):
    seed(people(20))
    broadcasts.create(spec())
    send, failed = emails.send_raw, []

    def flaky(to, raw, **kw):
        if to == "p7@example.com" and not failed:
            failed.append(to)
            raise ClientError({"Error": {"Code": "InternalFailure", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "SendRawEmail")
        return send(to, raw, **kw)

    monkeypatch.setattr(emails, "send_raw", flaky)
    broadcasts.schedule("march-news", {"now": True})
    run(rt, 30)
    assert failed and total(rt, "march-news") < 20  # the chunk failed part way: back after its visibility timeout
    run(rt, 600)
    assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(20)}
    report = broadcasts.report("march-news")
    assert (report["status"], report["sent"], report["processed"], report["audience"]) == ("sent", 20, 20, 20)


def test_ses_throttling_sends_the_rest_later_and_nothing_twice(tmp_path):
    """The gate trusts SendRatePerSecond (20); the account takes 5 a second: SES answers Throttling."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", parameters={"SendRatePerSecond": "20"},
                 rules=Rules(ses_max_send_rate=5)) as rt:
        seed(people(60))
        broadcasts.create(spec())
        broadcasts.schedule("march-news", {"now": True})
        run(rt, 120)
        assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(60)}
        assert broadcasts.report("march-news")["status"] == "sent"
        assert not rt.denied


def test_frequency_cap_skips_defers_or_is_ignored_per_broadcast(rt):
    seed(people(3))
    for name, cap in (("first", "skip"), ("second", "defer"), ("third", "skip"), ("fourth", "ignore")):
        broadcasts.create(spec(name=name, frequency_cap=cap))
    broadcasts.schedule("first", {"now": True})
    run(rt, 60)
    assert total(rt, "first") == 3  # a marketing email each: the next one may come 24 hours later
    for name in ("second", "third", "fourth"):
        broadcasts.schedule(name, {"now": True})
    run(rt, HOUR)
    assert (total(rt, "second"), total(rt, "third"), total(rt, "fourth")) == (0, 0, 3)
    second = broadcasts.report("second")
    assert (second["status"], second["deferred"], second["sent"]) == ("sending", 3, 0)
    third = broadcasts.report("third")
    assert (third["status"], third["skipped"], third["skipped_reasons"]) == ("sent", 3, {"frequency_cap": 3})
    run(rt, 24 * HOUR)  # the first email's slot frees: the deferred ones go
    assert sent_to(rt, "second") == {f"p{i}@example.com": 1 for i in range(3)}
    second = broadcasts.report("second")
    assert (second["status"], second["deferred"], second["sent"], second["skipped"]) == ("sent", 3, 3, 0)


def test_a_chunk_that_finds_the_second_full_backs_off(rt, monkeypatch):
    """Idle workers do not keep receiving the backlog: a chunk refused n times in a row comes back after
    1, 2, 4, 8, 8 ... seconds (worker.backoff); once it gets slots it is sent and nothing comes back."""
    from funnelpilot.broadcasts import launch, worker
    from funnelpilot.sending import pace

    ids = list(seed(people(3)).values())
    broadcasts.create(spec())
    requeued = []
    monkeypatch.setattr(launch, "send_chunks", requeued.extend)
    body, seen = {"b": "march-news", "id": "chunk-0", "c": ids}, []
    for _ in range(5):
        pace.acquire(pace.BROADCAST, pace.rate())  # the other workers took this second's slots
        assert worker.send_chunk(body) == {}
        [(body, delay)] = requeued
        requeued.clear()
        seen.append((body["r"], delay))
    assert seen == [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8)] and total(rt, "march-news") == 0
    rt.advance(1)
    assert worker.send_chunk(body) == {"sent": 3} and requeued == []
    assert sent_to(rt, "march-news") == {f"p{i}@example.com": 1 for i in range(3)}

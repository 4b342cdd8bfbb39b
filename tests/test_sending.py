"""The send pipeline end to end on the strict runtime (funnelpilot.sending): a burst far above the
SES rate goes out once each, a broadcast filling every second leaves funnel emails their slots, a
capped email is deferred (then sent, or skipped past its limit), quiet hours end at each contact's
own minute. Real state machines on moto's interpreter, stepped time."""
from collections import Counter
from email import message_from_string

import pytest

from conftest import START, entered_states, executions
from funnelpilot import bus, clock
from funnelpilot.funnel_spec import parse
from funnelpilot.models import PROFILE, Contact
from funnelpilot.sending import pace, sendtime
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.moto_adapter import sent_emails
from funnelpilot_local.runtime import ROOT, Runtime
from funnelpilot_local.template import ACCOUNT, REGION

HOUR = 3600


@pytest.fixture
def slow_ses(tmp_path):
    """A production SES account at 2 emails a second."""
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", rules=Rules(ses_max_send_rate=2)) as rt:
        yield rt
        assert not rt.denied, rt.denied


def people(n: int, prefix: str, **fields) -> dict[str, str]:
    """contact id -> address of n active contacts (written directly: the burst is the subject, not signups)."""
    out = {}
    for i in range(n):
        cid = f"c{prefix}{i:04d}"
        Contact(cid, PROFILE, email=f"{prefix}{i}@example.com", first_name="Sam", status="active", **fields).save()
        out[cid] = f"{prefix}{i}@example.com"
    return out


def inactive(cids) -> None:
    """contact.inactive for each at once: one re-engagement execution each, all sending in the same second."""
    bus.publish(*(bus.event("contact.inactive", cid, days=30) for cid in cids))


def recipients() -> Counter:
    return Counter(message_from_string(raw)["To"] for _, raw in sent_emails(ACCOUNT, REGION))


def states_of(rt, funnel: str) -> list[list[str]]:
    return [entered_states(rt, e["executionArn"]) for e in executions(rt, funnel)]


def test_a_burst_far_above_the_rate_all_goes_out_once(tmp_path):
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", rules=Rules(ses_max_send_rate=1)) as rt:
        crowd = people(20, "b")  # 20 emails wanted in the same second of an account sending 1 a second
        inactive(crowd)
        assert rt.settle(timeout=120)
        assert sum(recipients().values()) == 1  # the gate lets the second's one through, the others retry
        assert rt.advance(3 * 60, timeout=300)
        sent = recipients()
        assert sorted(sent) == sorted(crowd.values()) and set(sent.values()) == {1}  # every one, once
        journeys = states_of(rt, "reengagement")
        assert len(journeys) == 20 and not any("Record failure" in states for states in journeys)
        assert all(states[-1] == "Send reengage-1" for states in journeys)  # sent, waiting there for a click
        assert rt.errors == [] and rt.dead_letters == [] and not rt.denied


def test_funnel_emails_keep_their_slots_while_a_broadcast_fills_every_second(slow_ses):
    rt = slow_ses
    crowd = people(6, "p")
    taken = {}  # second -> slots the stand-in broadcast worker got

    def broadcast_second():
        taken[int(clock.now())] = pace.acquire(pace.BROADCAST, 50)

    broadcast_second()  # the broadcast takes the whole first second before the funnel emails come
    inactive(crowd)
    for _ in range(40):
        assert rt.advance(1)
        broadcast_second()  # at the start of each second it takes every slot nobody holds
    sent = recipients()
    assert sorted(sent) == sorted(crowd.values()) and set(sent.values()) == {1}
    last = max(message_sent_at(rt, cid) for cid in crowd)
    assert last - START <= 20  # all six within seconds, though the broadcast wanted every slot
    assert taken[int(START)] == 2 and all(n == 2 for s, n in taken.items() if s > last + 1)  # the rest: the broadcast's
    assert sum(taken.values()) + len(crowd) <= 2 * len(taken)  # never more than the rate


def message_sent_at(rt, cid: str) -> float:
    from datetime import datetime

    [item] = rt.client("dynamodb").query(TableName="ContactsTable", KeyConditionExpression="pk = :c AND begins_with(sk, :m)",
                                         ExpressionAttributeValues={":c": {"S": cid}, ":m": {"S": "MSG#"}})["Items"]
    return datetime.fromisoformat(item["sent_at"]["S"].replace("Z", "+00:00")).timestamp()


def test_the_end_of_quiet_hours_is_spread_over_the_hour_after_it(rt):
    crowd = people(8, "q")  # no time zone of their own: re-engagement's (UTC), quiet 21:00-08:00
    assert rt.advance(16 * HOUR)  # 02:00 UTC
    inactive(crowd)
    assert rt.settle()
    assert sum(recipients().values()) == 0  # nothing at night
    assert rt.advance(7 * HOUR + 59 * 60)  # 09:59
    times = sorted(message_sent_at(rt, cid) for cid in crowd)
    eight = START + 22 * HOUR  # 08:00 the next day
    assert len(set(times)) == 8 and eight <= times[0] and times[-1] < eight + HOUR
    assert times[-1] - times[0] >= 20 * 60  # spread over the hour, not all at 08:00:00
    assert times == sorted(eight + sendtime.spread(cid, 60) for cid in crowd)  # each contact's own second


def test_the_cap_and_quiet_hours_settings_are_checked_with_their_file_and_line(tmp_path):
    path = tmp_path / "funnels" / "f.yaml"
    path.parent.mkdir()
    path.write_text('id: f\nfrequency_cap: {emails: 1, hours: 24, defer_up_to_hours: 900}\n'
                    'quiet_hours: {start: "21:00", end: "08:00", spread_minutes: 300}\nsteps:\n  - tag: x\n')
    funnel, errors = parse(path, templates=False)
    assert funnel is None and errors == [
        f"{path}:2: frequency_cap: 0 <= defer_up_to_hours <= 720 (0: a capped email is skipped at once)",
        f"{path}:3: quiet_hours: 0 <= spread_minutes <= 240 (the sends at the end of quiet hours start over that "
        "many minutes, each contact at its own minute)"]
    path.write_text('id: f\nfrequency_cap: {emails: 2, hours: 12, defer_up_to_hours: 0}\n'
                    'quiet_hours: {start: "22:00", end: "07:00", spread_minutes: 15}\nsteps:\n  - tag: x\n')
    funnel, errors = parse(path, templates=False)
    assert errors == [] and funnel.frequency_cap == (2, 12.0) and funnel.defer_up_to == 0
    assert funnel.quiet_hours == ("22:00", "07:00") and funnel.quiet_spread == 15

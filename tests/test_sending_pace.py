"""The rate gate (funnelpilot.sending.pace) on the strict runtime: the SES quota or the stack's
parameter, one counter item per second, priorities that leave a broadcast the whole rate when
nobody else sends."""
import botocore.client

from funnelpilot import clock
from funnelpilot.sending import pace
from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.runtime import ROOT, Runtime

from conftest import START


def counter(rt, second: int) -> dict:
    item = rt.client("dynamodb").get_item(TableName="MetricsTable", Key={"pk": {"S": f"PACE#{second}"},
                                                                         "sk": {"S": "PACE"}}).get("Item", {})
    return {k: int(v["N"]) for k, v in item.items() if "N" in v}


def test_rate_is_the_ses_quota_read_once_per_container(rt, monkeypatch):
    calls, gate = [], botocore.client.BaseClient._make_api_call  # patched once the runtime's gate is in
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        lambda client, operation, params: calls.append(operation) or gate(client, operation, params))
    assert pace.rate() == 14 and pace.rate() == 14  # Rules.ses_max_send_rate: the account's MaxSendRate
    assert calls == ["GetSendQuota"]  # once: cached per container (5 minutes)


def test_the_stacks_parameter_wins_over_the_quota(tmp_path):
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "b", rules=Rules(ses_max_send_rate=9),
                 parameters={"SendRatePerSecond": "3"}):
        assert pace.rate() == 3  # SendRatePerSecond: a shared account's share


def test_a_second_grants_the_rate_and_no_more_then_the_next_one_starts_empty(rt):
    second = int(clock.now())
    assert pace.rate() == 14
    assert pace.acquire(pace.BROADCAST, 10) == 10
    assert pace.acquire(pace.BROADCAST, 10) == 4  # the exact remainder, no overdraw
    assert pace.acquire(pace.BROADCAST, 1) == 0
    assert counter(rt, second)["used"] == 14
    assert counter(rt, second)["expires_at"] > second  # TTL: the items go by themselves
    clock.advance_to(second + 1.5)
    assert pace.next_second() == 0.5
    assert pace.acquire(pace.FUNNEL) == 1 and pace.acquire(pace.BROADCAST, 20) == 13


def test_a_refused_funnel_send_holds_a_slot_of_the_next_second_which_broadcasts_leave(rt):
    second = int(clock.now())
    assert pace.acquire(pace.BROADCAST, 14) == 14
    assert [pace.acquire(pace.FUNNEL) for _ in range(3)] == [0, 0, 0]  # refused: each holds one of the next second
    assert counter(rt, second + 1) == {"used": 3, "held": 3, "expires_at": counter(rt, second + 1)["expires_at"]}
    clock.advance_to(second + 1)
    assert pace.acquire(pace.BROADCAST, 14) == 11  # the broadcast leaves the held slots
    assert [pace.acquire(pace.FUNNEL) for _ in range(4)] == [1, 1, 1, 0]  # the held ones, then none
    assert counter(rt, second + 1)["held"] == 0 and counter(rt, second + 1)["used"] == 14


def test_holds_never_exceed_the_rate(rt):
    second = int(clock.now())
    pace.acquire(pace.BROADCAST, 14)
    assert sum(pace.acquire(pace.FUNNEL) for _ in range(20)) == 0
    assert counter(rt, second + 1)["held"] == 14 and counter(rt, second + 1)["used"] == 14


def test_a_transactional_email_takes_the_next_seconds_slot_at_once(rt):
    second = int(clock.now())
    pace.acquire(pace.BROADCAST, 14)
    assert pace.acquire(pace.TRANSACTIONAL) == 1  # a confirmation does not wait behind a broadcast
    assert counter(rt, second + 1)["used"] == 1 and "held" not in counter(rt, second + 1)
    clock.advance_to(second + 1)
    assert pace.acquire(pace.BROADCAST, 14) == 13


def test_bad_priorities_are_refused(rt):
    import pytest

    with pytest.raises(ValueError, match="priority"):
        pace.acquire("newsletter")
    with pytest.raises(ValueError, match="several"):
        pace.acquire(pace.FUNNEL, 2)

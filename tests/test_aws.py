"""funnelpilot.aws: the shared condition checks and conflict retries."""
import pytest
from botocore.exceptions import ClientError
from pynamodb.exceptions import PutError, UpdateError

from funnelpilot import aws


def _error(code: str, reasons: list[str] | None = None) -> ClientError:
    response = {"Error": {"Code": code, "Message": "x"}}
    if reasons is not None:
        response["CancellationReasons"] = [{"Code": r} for r in reasons]
    return ClientError(response, "Op")


def test_conditional_failure_of_a_single_write_botocore_or_pynamodb():
    assert aws.is_conditional_failure(_error("ConditionalCheckFailedException"))
    assert not aws.is_conditional_failure(_error("ProvisionedThroughputExceededException"))
    assert aws.is_conditional_failure(PutError(cause=_error("ConditionalCheckFailedException")))
    assert not aws.is_conditional_failure(ValueError("nope"))


def test_failed_conditions_of_a_transaction_are_the_cancelled_items_indexes():
    cancelled = _error("TransactionCanceledException", ["None", "ConditionalCheckFailed", "None", "ConditionalCheckFailed"])
    assert aws.failed_conditions(cancelled) == [1, 3]
    assert aws.failed_conditions(_error("TransactionCanceledException", ["None", "TransactionConflict"])) == []
    assert aws.failed_conditions(_error("ThrottlingException")) == []
    assert aws.failed_conditions(ValueError("nope")) == []


def test_a_conflict_is_a_transaction_cancelled_only_for_conflicts_or_a_write_meeting_one():
    assert aws.is_conflict(_error("TransactionCanceledException", ["None", "TransactionConflict"]))
    assert aws.is_conflict(_error("TransactionConflictException"))
    assert aws.is_conflict(UpdateError(cause=_error("TransactionConflictException")))  # pynamodb wraps botocore's
    assert not aws.is_conflict(_error("TransactionCanceledException", ["ConditionalCheckFailed", "TransactionConflict"]))
    assert not aws.is_conflict(_error("TransactionCanceledException", ["None", "None"]))
    assert not aws.is_conflict(_error("ConditionalCheckFailedException"))


def test_retry_conflicts_retries_conflicts_only_and_raises_the_last():
    calls = []

    def conflicting(times: int, then=None):
        def call():
            calls.append(1)
            if len(calls) <= times:
                raise _error("TransactionConflictException")
            if then is not None:
                raise then
            return "done"
        return call

    assert aws.retry_conflicts(conflicting(3), base_delay=0.001) == "done" and len(calls) == 4
    calls.clear()
    with pytest.raises(ClientError) as info:
        aws.retry_conflicts(conflicting(99), attempts=4, base_delay=0.001)
    assert aws.is_conflict(info.value) and len(calls) == 4
    calls.clear()
    with pytest.raises(ClientError):
        aws.retry_conflicts(conflicting(1, then=_error("ValidationException")), base_delay=0.001)
    assert len(calls) == 2  # the validation error is not retried

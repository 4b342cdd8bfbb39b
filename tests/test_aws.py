"""funnelpilot.aws: the shared condition checks."""
from botocore.exceptions import ClientError
from pynamodb.exceptions import PutError

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

"""Many requests and events on one contact at once: nothing is lost, nothing is doubled.

Each thread loads its own copy of the handler module, as separate Lambda execution
environments would (a module-level resolver is not meant to serve two requests at once).
"""
import importlib.util
import threading
import uuid

from conftest import executions
from reliability import mails, sent_count, task_inputs

from funnelpilot import metrics, tokens
from funnelpilot.errors import TransientError
from funnelpilot_local.runtime import LambdaContext, http_api_event
from funnelpilot.models import PROFILE, Contact

N = 12


def environment(rt, lid: str):
    """A fresh copy of a function's handler (one Lambda execution environment)."""
    fn = rt.functions[lid]
    spec = importlib.util.spec_from_file_location(f"env_{lid}_{uuid.uuid4().hex}", fn.module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, fn.handler_name)


def at_once(jobs) -> list:
    """Run the callables together (released by one barrier); re-raise the first error."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(i, job):
        barrier.wait()
        try:
            results[i] = job()
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_signups_of_one_person_lose_no_list_and_send_one_welcome(rt, test_lists):
    route = next(r for r in rt.routes if (r.method, r.path) == ("POST", "/signup"))
    per_address = 5  # template.yaml SIGNUP_LIMIT_PER_ADDRESS: a sixth would be answered 429
    test_lists.update({f"l{i}": {"double_opt_in": False} for i in range(per_address)})
    jobs = []
    for i in range(per_address):
        handler = environment(rt, route.function)
        event = http_api_event("POST", "/signup", "", {"content-type": "application/json"},
                               f'{{"email": "same@example.com", "consent": true, "list": "l{i}"}}', {}, route,
                               "198.51.100.7")
        jobs.append(lambda h=handler, e=event: h(e, LambdaContext(route.function)))
    responses = at_once(jobs)
    assert {r["statusCode"] for r in responses} == {202}
    cid = tokens.contact_id("same@example.com")
    assert Contact.get(cid, PROFILE).lists == {f"l{i}" for i in range(per_address)}
    consents = list(Contact.query(cid, Contact.sk.startswith("CONSENT#")))
    assert len(consents) == per_address
    assert rt.settle(timeout=60)
    assert len(executions(rt)) == 1
    assert [m["To"] for m in mails(rt)].count("same@example.com") == 1  # (sales alerts go to sales@)


def test_concurrent_duplicates_of_a_funnel_step_send_one_email(rt):
    rt.http("POST", "/signup", json_body={"email": "dup@example.com", "consent": True, "list": "test-single"})
    assert rt.settle(timeout=60)
    [(function, payload)] = task_inputs(rt)
    # a step not sent yet (transactional: the welcome just took the day's marketing slot)
    fresh = dict(payload, execution=payload["execution"] + "-again", transactional=True)
    handlers = [environment(rt, function) for _ in range(N)]

    def attempt(handler):
        try:
            return handler(dict(fresh), LambdaContext(function))
        except TransientError:  # the claim is held by another attempt: Step Functions retries this one later
            return {"status": "in_flight"}

    results = at_once([lambda h=h: attempt(h) for h in handlers])
    assert "sent" in {r["status"] for r in results} <= {"sent", "in_flight"}
    assert sum(1 for r in results if r["status"] == "sent" and not r.get("duplicate")) == 1
    assert sent_count() == 2  # the welcome, and this step once


def test_concurrent_counts_add_up_exactly_once_per_event(rt):
    keys = [f"evt-{i % (N // 2)}" for i in range(N)]  # every event delivered twice, at once
    counted = at_once([lambda k=k: metrics.count("welcome", "Send welcome-1", {"sent": 1}, once_key=k)
                       for k in keys])
    assert sum(counted) == N // 2
    item = rt.client("dynamodb").get_item(TableName="MetricsTable",
                                          Key=metrics.counter_key("welcome", "STEP#Send welcome-1"))
    assert item["Item"]["sent"] == {"N": str(N // 2)}

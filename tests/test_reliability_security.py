"""Security: no personal data in any log line of a full journey."""
import re

from reliability import audience

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def test_no_email_address_in_any_log_line_of_a_full_journey(rt, logs):
    audience(rt)
    rt.http("POST", "/signup", json_body={"email": "bad@@example.com", "consent": True})
    rt.http("POST", "/signup", json_body={"email": "ok@example.com", "consent": True, "list": "x@example.com"})
    assert rt.settle(timeout=60)
    lines = logs()
    assert any(re.search(r'"(message|msg)": ?"signup"', line) for line in lines)  # the capture works
    leaks = [line for line in lines if EMAIL.search(line)]
    assert leaks == []

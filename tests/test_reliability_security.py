"""Security: no personal data in any log line of a full journey."""
import io
import json
import logging
import re

import pytest
from reliability import audience

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


class Capture(logging.Handler):
    """Every record, formatted as the function's powertools logger writes it, plus its raw fields."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        formatter = next((h.formatter for h in logging.getLogger("funnelpilot").handlers
                          if h is not self and h.formatter), None) or logging.Formatter()
        self.lines.append(formatter.format(record))
        self.lines.append(json.dumps(record.__dict__, default=str))


@pytest.fixture
def logs(rt):
    """Every log line written while the test runs: each stream handler of every logger is
    pointed at a buffer (the handlers stay as configured), and every record is captured."""
    for function in rt.functions.values():
        function.handler  # noqa: B018 - import every handler: their loggers exist from now on
    capture, buffer = Capture(), io.StringIO()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    streams, levels = {}, {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.INFO)  # the functions' level (INFO), whatever an earlier runtime left on the logger
        logger.addHandler(capture)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in streams:
                streams[handler] = handler.setStream(buffer)
    try:
        yield lambda: capture.lines + buffer.getvalue().splitlines()
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
            logger.setLevel(levels[logger])
        for handler, stream in streams.items():
            handler.setStream(stream)


def test_no_email_address_in_any_log_line_of_a_full_journey(rt, logs):
    audience(rt)
    rt.http("POST", "/signup", json_body={"email": "bad@@example.com", "consent": True})
    rt.http("POST", "/signup", json_body={"email": "ok@example.com", "consent": True, "list": "x@example.com"})
    assert rt.settle(timeout=60)
    lines = logs()
    assert any(re.search(r'"(message|msg)": ?"signup"', line) for line in lines)  # the capture works
    leaks = [line for line in lines if EMAIL.search(line)]
    assert leaks == []

"""Header values built from contact data under every Python the project supports.

The header folder differs between versions: on 3.11 and 3.12 (the Lambda runtime) an RFC 2047
encoded word in a value was decoded while folding, so a first name of
``=?utf-8?q?Ann=0D=0ABcc:_evil@x.test?=`` produced a raw ``Bcc:`` line; 3.13 did not. So
funnelpilot.channels.mime (standard library only) builds the message in a subprocess of each
interpreter, which parses it back; this process parses the same bytes again.
"""
import base64
import glob
import json
import shutil
import subprocess
import sys
import warnings
from email import message_from_bytes, policy
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

from funnelpilot.channels import mime

LAYER = Path(__file__).resolve().parents[1] / "layers" / "funnelpilot"
VERSIONS = ("3.11", "3.12", "3.13")  # pyproject: requires-python >= 3.11; Lambda runs 3.12
REQUIRED = "3.12"
NAMES = [
    "Ann", "José 山田 🎉", "=?utf-8?q?Ann=0D=0ABcc:_evil@x.test?=", "=?UTF-8?B?QW5uDQpCY2M6IGV2aWxAeC50ZXN0?=",
    "=?iso-8859-1?q?=0ABcc:_a@x.test?=", "x=?utf-8?q?=0D=0ABcc:_b@x.test?=y", "==??utf-8?q?=0A?==",
    "=?utf-8?q?A?= =?utf-8?q?=0D=0ABcc:_c@x.test?=", "=?utf-8*en?q?=0D=0ABcc:_d@x.test?=",
    "Ann\r\nBcc: e@x.test", "Ann\nBcc: f@x.test", "Ann\rBcc: g@x.test", "Ann\u2028Bcc: h@x.test",
    "Ann\u2029Bcc: i@x.test", "Ann\x85Bcc: j@x.test", "Ann\x0bBcc: k@x.test", "Ann\x0cBcc: l@x.test",
    "Ann\x1cBcc: m@x.test", "Ann\x1dBcc: n@x.test", "Ann\x1eBcc: o@x.test", "Ann\x00Bcc: p@x.test",
    "Ann\r\n\r\n<html>body</html>", "Ann:\r\n Bcc: q@x.test", "A" * 300 + " =?utf-8?q?=0ABcc:_r@x.test?=",
]
HEADERS = ["from", "to", "subject", "date", "message-id", "x-funnelpilot-message-id", "list-unsubscribe", "list-id",
           "reply-to", "mime-version", "content-type"]
CHILD = """
import base64, json, sys
from email import message_from_bytes, policy
from email.utils import parseaddr, parsedate_to_datetime
sys.path.insert(0, sys.argv[1])
from funnelpilot.channels import mime
out = []
for name in json.loads(sys.stdin.read()):
    raw = mime.build(sender="news@example.com", to="ann@example.com", subject=f"Welcome, {name}!",
                     message_id="m1", headers={"List-Unsubscribe": "<https://x.test/u/t>",
                                               "List-Id": f"{name} <news.example.com>", "Reply-To": "hi@example.com"},
                     text="hi", html="<p>hi</p>", from_name=name, date=1772445600)
    mail = message_from_bytes(raw, policy=policy.default)
    out.append({"raw": base64.b64encode(raw).decode(), "keys": [k.lower() for k in mail.keys()],
                "subject": str(mail["Subject"]), "list_id": str(mail["List-Id"]), "from": str(mail["From"]),
                "date": str(mail["Date"])})
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "messages": out}))
"""


def interpreter(version: str) -> str | None:
    """pyenv's build of ``version`` (the newest patch release), else python3.X on PATH."""
    patch = lambda path: int(Path(path).parents[1].name.split(".")[2])  # noqa: E731
    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.[0-9]*/bin/python"), key=patch)
    if found:
        return found[-1]
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    return shutil.which(f"python{version}")


def check(version: str, python: str) -> None:
    done = subprocess.run([python, "-c", CHILD, str(LAYER)], input=json.dumps(NAMES), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{python}: {done.stderr}"
    result = json.loads(done.stdout)
    assert result["version"] == version, (python, result["version"])
    for name, got in zip(NAMES, result["messages"], strict=True):
        subject, list_id = mime.header_text(f"Welcome, {name}!"), mime.header_text(f"{name} <news.example.com>")
        assert sorted(got["keys"]) == sorted(HEADERS), (version, name, got["keys"])
        assert (got["subject"], got["list_id"]) == (subject, list_id), (version, name)
        # the display name (FromName) goes through the same function: one From, the address intact
        assert parseaddr(got["from"]) == (mime.header_text(name), "news@example.com"), (version, name, got["from"])
        assert parsedate_to_datetime(got["date"]).timestamp() == 1772445600, (version, got["date"])
        raw = base64.b64decode(got["raw"])
        here = message_from_bytes(raw, policy=policy.default)
        assert sorted(k.lower() for k in here.keys()) == sorted(HEADERS), (version, name)
        assert str(here["Subject"]) == subject and "=?" not in subject and "\n" not in subject
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n")), (version, name)


def test_headers_from_contact_data_are_exactly_the_expected_ones_on_every_supported_python():
    missing = []
    for version in VERSIONS:
        python = interpreter(version)
        if python is None:
            missing.append(version)
            continue
        check(version, python)
    if missing:
        warnings.warn(f"no interpreter for Python {', '.join(missing)}: headers not checked there")
    assert REQUIRED not in missing, f"Python {REQUIRED} (the Lambda runtime) is not installed: cannot check it"


def test_header_text_leaves_one_line_without_encoded_words():
    assert mime.header_text("=?utf-8?q?Ann=0D=0ABcc:_x@evil.test?=") == "= ?utf-8?q?Ann=0D=0ABcc:_x@evil.test?="
    assert mime.header_text("==??") == "== ??"
    for brk in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
        assert mime.header_text(f"Ann{brk}Bcc: x") == "Ann Bcc: x"
        assert ("a" + brk + "b").splitlines() != ["a" + brk + "b"]  # each one is a line break to Python
    assert mime.header_text("  José\t\t山田  ") == "José 山田"


def test_headers_parsed_and_folded_once_give_the_bytes_the_policy_gives(monkeypatch):
    """mime._Building remembers the header objects and folded lines it made: every message, the first
    with a header and each later one, is byte for byte what ``POLICY`` itself writes (the boundary and
    Message-ID fixed), for every hostile name, long and non-ASCII values, and any header class."""
    import random

    monkeypatch.setattr(mime, "make_msgid", lambda idstring, domain: f"<fixed.{idstring}@{domain}>")
    long_url = "<https://x.test/u/" + "t" * 1200 + ">"

    def message(name: str, building) -> bytes:
        monkeypatch.setattr(mime, "_BUILDING", building)
        random.seed(7)  # the multipart boundary
        return mime.build(sender="news@example.com", to=f"{name} <ann@example.com>", subject=f"Welcome, {name}!",
                          message_id="m1", headers={"List-Unsubscribe": long_url, "List-Id": f"{name} <news.example.com>",
                                                    "Reply-To": "hi@example.com", "X-SES-MESSAGE-TAGS": "email=welcome-1"},
                          text=f"hi {name}\n" * 3, html=f"<p>hi {name}</p>", from_name=name, date=1772445600)

    cached = mime._BUILDING
    for name in NAMES + ["Zoë " * 40, "x" * 990]:
        plain = message(name, mime.POLICY)
        assert message(name, cached) == message(name, cached) == plain, name
    assert mime._stored.cache_info().hits and mime._folded.cache_info().hits

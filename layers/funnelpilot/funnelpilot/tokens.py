"""Signed, opaque, URL-safe tokens for links in emails, and the contact id.

A token is ``base64url(kind|field|field...)`` + ``.`` + ``base64url(HMAC-SHA256[:16])``.
It names a message and a link *index*, never a URL: the link a click goes to is stored
with the message, so a forged token can at worst point at a link we already sent.
The HMAC key is an SSM Parameter Store SecureString (standard tier: free, where a Secrets
Manager secret costs $0.40 a month), named by template.yaml's ``SigningKeyParameter`` and read
once per cold start (powertools parameters, cached; one GetParameter and the KMS decrypt SSM
makes for it). Measured with ``python -X importtime``: ``aws_lambda_powertools.utilities.parameters``
adds ~10 ms (plus ~7 ms for the powertools package) on top of ~200 ms for ``boto3`` itself, so
the pixel and click handlers use it too instead of a hand-rolled ssm client.
"""
import base64
import hashlib
import hmac
from functools import cache

from funnelpilot.config import config

SEP = "|"
# Link index of the invisible honeypot link in every email (a hit on it is a machine).
HONEYPOT = "h"


@cache
def _key() -> bytes:
    from aws_lambda_powertools.utilities.parameters import get_parameter

    return get_parameter(config().signing_key_parameter, decrypt=True, max_age=3600).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url: only the canonical, unpadded encoding of some bytes decodes (a
    lenient decoder accepts other final characters, padding and stray bytes: several
    spellings of one token). Raises ValueError otherwise."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _mac(payload: bytes) -> bytes:
    return hmac.new(_key(), payload, hashlib.sha256).digest()[:16]


def sign(kind: str, *fields: str) -> str:
    if any(SEP in f for f in (kind, *fields)):
        raise ValueError("token fields may not contain '|'")
    payload = SEP.join((kind, *fields)).encode()
    return f"{_b64(payload)}.{_b64(_mac(payload))}"


def verify(kind: str, token: str, arity: int) -> list[str] | None:
    """The fields of a valid token of this kind and arity, else None (never raises)."""
    try:
        body, mac = token.split(".", 1)
        payload = _unb64(body)
        if not hmac.compare_digest(_unb64(mac), _mac(payload)):
            return None
        parts = payload.decode().split(SEP)
    except (ValueError, UnicodeDecodeError):
        return None
    if parts[0] != kind or len(parts) != arity + 1:
        return None
    return parts[1:]


def url(route: str, kind: str, *fields: str) -> str:
    """Absolute link to a tokenised route, e.g. ``url("c", "c", cid, mid, "0")`` -> ``<public>/c/<token>``."""
    return f"{config().public_url}/{route}/{sign(kind, *fields)}"


def contact_id(normalised_email: str) -> str:
    """Stable pseudonymous id: a keyed hash of the normalised email (26 chars, [a-z2-7]).

    Keyed so that an id seen in a log or an execution name cannot be reversed by
    hashing guessed addresses.
    """
    digest = hmac.new(_key(), b"contact:" + normalised_email.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:16]).decode().rstrip("=").lower()


def keyed_id(purpose: str, value: str) -> str:
    """A short keyed pseudonym for a value that must not be stored as is (an IP address)."""
    digest = hmac.new(_key(), f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode().lower()


def digest_id(prefix: str, *parts: str) -> str:
    """Deterministic id for an item derived from other ids (e.g. a message from execution+state)."""
    raw = hashlib.sha256("\x1f".join(parts).encode()).digest()[:15]
    return prefix + base64.b32encode(raw).decode().lower()

"""Phone numbers as the SMS channel takes them: E.164 (``+`` country code and number, at most 15 digits).

A form may write spaces, dashes, dots and parentheses between the digits; nothing else is guessed
(no national formats, no default country): a number without its ``+`` and country code is refused.
"""
import re

from funnelpilot.errors import InvalidField

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SEPARATORS = re.compile(r"[\s().-]")


def parse_phone(raw: str | None, field: str = "phone") -> str | None:
    """The E.164 number, None when empty, else ``InvalidField(field)``."""
    if raw is None or not str(raw).strip():
        return None
    number = _SEPARATORS.sub("", str(raw).strip())
    if not _E164.match(number):
        raise InvalidField(field, f"{field} must be an international number in E.164 form, e.g. +14155550123")
    return number

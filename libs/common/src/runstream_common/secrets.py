"""Secrets in settings: placeholders are refused, a missing secret says what to set.

A deployment file may ship a placeholder (``change-me``, ``REPLACE_ME``) where the
operator must put a real password. A service that started with it would either
fail later with a confusing error or, worse, run with a guessable password. So
every secret setting goes through :func:`refuse_placeholder` when the settings
are read, and the service stops at start-up with a message naming the setting.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from .errors import ConfigurationError

# Whole values that are never a real secret (compared without case).
_PLACEHOLDER_VALUES = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "changeit",
        "todo",
        "tbd",
        "xxx",
        "example",
    }
)
# Markers that make any value a placeholder wherever they appear.
_PLACEHOLDER_MARKERS = re.compile(
    r"change[-_ ]?me|replace[-_ ]?me|fill[-_ ]?me|your[-_ ]?password|placeholder",
    re.IGNORECASE,
)
# <password>, ${PASSWORD}, $(cat ...): a template that was never filled in.
_TEMPLATE = re.compile(r"^<[^<>]*>$|^\$\{[^}]*\}$|^\$\([^)]*\)$")

RUNBOOK_HINT = "docs/runbook.md, 'Secrets'"


def placeholder_reason(value: str) -> str | None:
    """Why ``value`` looks like a placeholder rather than a secret, or None."""
    text = value.strip()
    if text.lower() in _PLACEHOLDER_VALUES:
        return f"{text!r} is a well-known placeholder"
    marker = _PLACEHOLDER_MARKERS.search(text)
    if marker:
        return f"it contains the placeholder {marker.group(0)!r}"
    if _TEMPLATE.match(text):
        return f"{text!r} is an unfilled template"
    return None


def refuse_placeholder(value: str, what: str) -> None:
    """Raise ``ValueError`` (a settings validation error) if ``value`` is a placeholder."""
    reason = placeholder_reason(value)
    if reason is not None:
        raise ValueError(f"{what} is not set to a real secret: {reason} (see {RUNBOOK_HINT})")


def refuse_placeholder_in_dsn(dsn: str, what: str) -> None:
    """Like :func:`refuse_placeholder` for the password inside a ``scheme://user:pw@host`` DSN."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None  # an unusual DSN: the database client will judge it
    if password is not None:
        refuse_placeholder(unquote(password), f"the password in {what}")
    elif _PLACEHOLDER_MARKERS.search(dsn):
        refuse_placeholder(dsn, what)


class MissingSecret(SecretStr):
    """The default of a secret that has none: reading it explains what to set.

    It prints like any secret (``**********``), so settings can be shown and
    commands that do not need it run; :meth:`get_secret_value` raises
    :class:`ConfigurationError` with ``message``.
    """

    def __init__(self, message: str) -> None:
        super().__init__("")
        self._message = message

    def get_secret_value(self) -> str:
        raise ConfigurationError(self._message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MissingSecret) and other._message == self._message

    def __hash__(self) -> int:
        return hash(self._message)

"""Secrets out of everything printed: URLs lose their userinfo and ``password=``-style parameters, and known
secrets (a Redis password given anywhere) are masked. The one redaction helper: every error the CLI prints and
every log line of the daemon goes through :func:`redact`."""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import unquote

# key=value pairs whose key ends like these hold a secret (password=, ?pass=, api_secret=, auth_token=, ...)
_SECRET_QUERY_KEYS = ("password", "passwd", "pass", "pwd", "secret", "token", "auth")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAM = re.compile(r"(?i)\b([\w-]*(?:" + "|".join(_SECRET_QUERY_KEYS) + r"))=[^&\s'\"<>]*")
_MIN_SECRET_LEN = 3


def _split_url(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, the rest)``. The userinfo is everything before the last ``@`` of the
    authority, or of the whole text when an ``@`` follows a ``/``, ``?`` or ``#`` (a password with those in
    it); text without a scheme is treated the same."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return scheme + sep, None, rest
    end = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if at != -1 and "@" not in rest[at:]:
            end = min(end, at)
    authority, tail = rest[:end], rest[end:]
    userinfo, _, host = authority.rpartition("@")
    return scheme + sep, userinfo, host + tail


def redact_url(url: str) -> str:
    """``url`` with its userinfo (user and password) and secret query parameters (``password=`` and the like)
    replaced by ``***``. Text without a scheme is treated as ``user:password@host...`` too."""
    prefix, userinfo, rest = _split_url(url)
    out = prefix + ("" if userinfo is None else "***@") + rest
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", out)


def url_secrets(url: str) -> list[str]:
    """The secrets in ``url`` as they may appear in other text: its password (or a userinfo without ``:``) and
    secret query parameters, raw and percent-decoded, longest first; at least three characters each, so that
    replacing them keeps messages readable."""
    _, userinfo, rest = _split_url(url)
    found: list[str] = []
    if userinfo:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(rest)]
    found += [unquote(f) for f in found]
    return sorted({f for f in found if len(f) >= _MIN_SECRET_LEN}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log line) with every URL in it passed through :func:`redact_url`, every
    ``password=...``-style pair masked, and each of ``secrets`` (see :func:`url_secrets`) replaced by ``***``.

    The one redaction helper: every error the CLI prints and every log line of the daemon goes through it."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, "***")
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)

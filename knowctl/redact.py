"""Credentials inside URLs: found, hidden wherever a URL is shown, refused where they would hide.

Some settings are URLs that may carry ``user:password@`` (see
``knowctl.settings.CREDENTIAL_URL_FIELDS``). Whatever prints or logs one passes it through
:func:`redact_url`. Redaction can only find a password in the URL's host part (its
authority), so settings validation uses :func:`check_authority` to refuse URLs where part of
the password would land in the path, query or fragment (an unencoded ``/``, ``?`` or
``#`` in it); no message here ever echoes the URL.

Only the standard library: the CLI and the settings import this.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
# Query parameters whose value is a secret whatever the URL (redis-py and Sentinel options).
SECRET_PARAMS = frozenset(
    {"password", "pass", "passwd", "secret", "token", "ssl_password", "sentinel_password"}
)
ENCODE_HINT = "percent-encode '@', '/', '?', '#' and ':' in a user name or password (%40 %2F %3F %23 %3A)"
# scheme://userinfo@ inside free text (log lines, exception messages).
# Greedy up to the last '@' before the path: a password may hold an unencoded '@'.
_IN_TEXT = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s/?#\"']*)@")


def _split_authority(url: str) -> tuple[str, str, str] | None:
    """(scheme://, authority, rest) of ``url``, or None when it has no ``://``."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return None
    end = next((i for i, c in enumerate(after) if c in "/?#"), len(after))
    return scheme + sep, after[:end], after[end:]


def _mask_userinfo(userinfo: str) -> str:
    # A lone name may itself be a token (https://TOKEN@host): hidden too.
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if colon else MASK


def redact_url(url: str) -> str:
    """``url`` with its password (and any lone user name, and secret query values) as ``***``.

    Safe on any string: text that is not a URL comes back unchanged, and a URL whose
    password would spill past the host part (see :func:`check_authority`) comes back as
    ``scheme://***`` rather than half hidden."""
    parts = _split_authority(url)
    if parts is None:
        return url
    head, authority, rest = parts
    if "@" in rest:
        return head + MASK  # no telling where the password ends: show none of it
    userinfo, at, hostpart = authority.rpartition("@")
    if at:
        authority = f"{_mask_userinfo(userinfo)}@{hostpart}"
    path, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if k.lower() in SECRET_PARAMS and v else v) for k, v in pairs]
        rest = f"{path}?{urlencode(masked, safe='*')}{hash_}{fragment}"
    return head + authority + rest


def redact_text(text: str) -> str:
    """``text`` (a log line, an error message) with every ``scheme://user:password@`` hidden."""
    if "@" not in text:  # the common case costs one scan
        return text
    return _IN_TEXT.sub(lambda m: f"{m.group(1)}{_mask_userinfo(m.group(2))}@", text)


def carries_credentials(url: str | None) -> bool:
    """Whether ``url`` holds a user name, a password or a secret query parameter."""
    if not url:
        return False
    parts = _split_authority(url)
    if parts is None:
        return False
    _, authority, rest = parts
    if "@" in authority or "@" in rest:
        return True
    query = rest.partition("?")[2].partition("#")[0]
    return any(k.lower() in SECRET_PARAMS and v for k, v in parse_qsl(query, keep_blank_values=True))


def check_authority(url: str, *, single_host: bool = True) -> None:
    """ValueError (never echoing ``url``) unless its user info and host part parse cleanly.

    ``single_host``: also check the one ``host[:port]`` (a bad port, a broken IPv6
    literal); a comma-separated host list (cluster, sentinel) is left to its own parser."""
    parts = _split_authority(url)
    if parts is None:
        raise ValueError("must be a URL: scheme://host...")
    rest = parts[2]
    if "@" in rest:
        raise ValueError(f"has '@' after its host part: {ENCODE_HINT}")
    if not single_host:
        return
    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        # urlsplit's own messages quote the port text, which may be a mistyped password.
        raise ValueError(f"has a bad host or port after '//' ({ENCODE_HINT})") from None

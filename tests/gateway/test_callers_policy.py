"""Pure caller policy (knowctl.policy.callers): credentials, client address, keys, user names,
and the RateLimit header fields."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowctl.policy import callers as policy
from knowctl.policy.callers import KeyRecord
from knowctl.policy.windows import Window

TRUSTED = policy.parse_networks("10.0.0.0/8, 192.168.1.7, fd00::/8")


# --- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ({"x-goog-api-key": "kc_a"}, "", "kc_a"),
        ({"authorization": "Bearer kc_b"}, "", "kc_b"),
        ({"authorization": "bearer   kc_b  "}, "", "kc_b"),
        ({}, "alt=sse&key=kc_c", "kc_c"),
        ({}, "key=kc_c&key=kc_d", "kc_d"),
        ({"x-goog-api-key": "kc_a", "authorization": "Bearer kc_b"}, "key=kc_c", "kc_a"),
        ({"authorization": "Basic dXNlcjpwdw=="}, "", None),
        ({"authorization": "Bearer "}, "", None),
        ({"x-goog-api-key": "  "}, "key=", None),
        ({}, "monkey=1", None),
    ],
)
def test_presented_credential(header: dict[str, str], query: str, expected: str | None) -> None:
    assert policy.presented_credential(header, query) == expected


def test_without_credentials_removes_every_place() -> None:
    headers = [("x-goog-api-key", "k"), ("authorization", "Bearer k"), ("content-type", "a/b")]
    kept, query = policy.without_credentials(headers, "alt=sse&key=k&x=1")
    assert kept == [("content-type", "a/b")]
    assert query == "alt=sse&x=1"
    assert policy.without_credentials([], "alt=sse") == ([], "alt=sse")


# Every spelling of a credential parameter Google's front end decodes to one it reads.
CREDENTIAL_QUERIES = [
    "key=S",
    "%6Bey=S",
    "%6b%65%79=S",
    "KEY=S",
    "$key=S",
    "%24key=S",
    "access_token=S",
    "access%5Ftoken=S",
    "oauth_token=S",
    "bearer_token=S",
    "alt=sse;key=S",
    "x=1&key=S&y=2",
    "+key+=S",
]


@pytest.mark.parametrize("query", CREDENTIAL_QUERIES)
def test_a_credential_in_the_query_is_found_whatever_its_spelling(query: str) -> None:
    assert [value for _, value in policy.query_credentials(query)] == ["S"]
    assert policy.presented_credential({}, query) == "S"
    assert [value for _, value in policy.presented_credentials([], query)] == ["S"]
    _, stripped = policy.without_credentials([], query)
    assert "S" not in stripped and policy.query_credentials(stripped) == []


@pytest.mark.parametrize("query", ["", "alt=sse", "monkey=1", "keys=S", "akey=S", "%ZZ=1", "key=", "key"])
def test_no_credential_where_there_is_none(query: str) -> None:
    assert policy.query_credentials(query) == []
    # An empty credential parameter is none, but still not the gateway's to pass on.
    assert policy.without_credentials([], query) == ([], "" if query in ("key=", "key") else query)


def test_every_credential_of_a_pass_through_call_is_found() -> None:
    headers = [
        ("x-goog-api-key", "A"),
        ("x-goog-api-key", "B"),  # repeated: forwarded as it came, so it is part of the caller
        ("authorization", "Bearer ya29.T"),
        ("x-goog-iam-authorization-token", "I"),
        ("content-type", "application/json"),
    ]
    found = policy.presented_credentials(headers, "access_token=Q")
    assert found == [
        ("x-goog-api-key", "A"),
        ("x-goog-api-key", "B"),
        ("authorization", "ya29.T"),
        ("x-goog-iam-authorization-token", "I"),
        ("access_token", "Q"),
    ]
    # A scheme the gateway does not know is still a credential, whole: Google judges it.
    assert policy.presented_credentials([("authorization", "Basic dXNlcjpwdw==")], "") == [
        ("authorization", "Basic dXNlcjpwdw==")
    ]
    assert policy.presented_credentials([("authorization", "  "), ("x-goog-api-key", "")], "key=") == []


def test_without_credentials_drops_browser_state_and_billing_choices() -> None:
    headers = [
        ("cookie", "session=1"),
        ("cookie2", "x"),
        ("proxy-authorization", "Basic x"),
        ("x-goog-authuser", "1"),
        ("x-goog-user-project", "someone-else"),
        ("x-goog-iam-authority-selector", "u"),
        ("x-goog-iam-authorization-token", "t"),
        ("x-goog-api-client", "genai-sdk/2"),
        ("accept", "*/*"),
    ]
    kept, query = policy.without_credentials(
        headers, "userProject=p&%24userProject=p&passwd=x&password=y&fields=a%2Cb&alt=sse"
    )
    assert kept == [("x-goog-api-client", "genai-sdk/2"), ("accept", "*/*")]
    assert query == "fields=a%2Cb&alt=sse"  # what is kept keeps its own encoding


_NAMES = ["key", "access_token", "oauth_token", "bearer_token", "userProject", "password"]


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` as a client may spell it: any letter percent-encoded or in upper case, with
    or without Google's ``$`` prefix (itself maybe encoded)."""
    letters = [draw(st.sampled_from([c, c.upper(), f"%{ord(c):02X}", f"%{ord(c):02x}"])) for c in name]
    prefix = draw(st.sampled_from(["", "$", "%24"]))
    return prefix + "".join(letters)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("secret"), st.sampled_from(_NAMES).flatmap(spelled)),
            st.tuples(
                st.just("plain"), st.sampled_from(["alt", "fields", "x", "monkey", "keys", "prettyPrint"])
            ),
        ),
        max_size=6,
    ),
    st.sampled_from(["&", ";"]),
)
def test_no_spelling_of_a_credential_survives_the_strip(parts: list[tuple[str, str]], separator: str) -> None:
    query = separator.join(f"{name}=v{i}" for i, (_, name) in enumerate(parts))
    _, stripped = policy.without_credentials([], query)
    assert policy.query_credentials(stripped) == []
    survivors = [f"{name}=v{i}" for i, (kind, name) in enumerate(parts) if kind == "plain"]
    if len(survivors) == len(parts):
        assert stripped == query  # nothing to strip: the query goes on untouched
    else:
        assert stripped == "&".join(survivors)
    if any(kind == "secret" and policy.param_name(name) in policy.CREDENTIAL_PARAMS for kind, name in parts):
        assert policy.query_credentials(query)  # recognised before it was stripped


def test_credential_names() -> None:
    assert policy.credential_identity("AIzaX") == policy.credential_identity([("x-goog-api-key", "AIzaX")])
    assert policy.credential_identity([("x-goog-api-key", "AIzaX")]) == policy.credential_identity(
        [("key", "AIzaX")]
    )
    both = policy.credential_identity([("x-goog-api-key", "AIzaX"), ("key", "AIzaY")])
    assert both == policy.credential_identity([("key", "AIzaY"), ("x-goog-api-key", "AIzaX")])
    assert both not in (policy.credential_identity("AIzaX"), policy.credential_identity("AIzaY"))
    assert policy.is_credential_identity(both)
    assert not policy.is_credential_identity(both + "\n") and not policy.is_credential_identity("cred-x")


def test_keys_and_digests() -> None:
    key = policy.make_key(bytes(range(32)))
    assert key.startswith("kc_") and len(key) == 3 + 43 and "=" not in key
    assert re.fullmatch(r"[0-9a-f]{64}", policy.digest(key))
    assert policy.digest(key) != policy.digest(key + "x")
    key_id = policy.make_key_id(b"\x00\x01\x02\x03\x04\xff")
    assert key_id == "k0001020304ff" and policy.is_key_id(key_id)
    assert not policy.is_key_id("k0001020304f") and not policy.is_key_id("../etc")
    with pytest.raises(ValueError):
        policy.make_key(b"short")
    name = policy.credential_identity("AIzaSecret")
    assert name.startswith("cred-") and "AIzaSecret" not in name and len(name) == 37


def test_key_record_round_trip() -> None:
    record = KeyRecord("k000000000001", "alice", "gold", "HIGH", True, created=1.5e9, revoked=None)
    assert KeyRecord.from_json(record.to_json()) == record
    revoked = KeyRecord("k000000000001", "bob", created=1.5e9, revoked=1.6e9)
    assert KeyRecord.from_json(revoked.to_json()) == revoked
    public = revoked.public()
    assert public["created"] == "2017-07-14T02:40:00Z" and public["revoked"].endswith("Z")
    assert "key" not in public
    with pytest.raises(ValueError):
        KeyRecord.from_json(b"[1]")


# --- user names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "a", "svc.web-1", "bob@example.com", "X" * 128, "a+b=c_d"])
def test_valid_user_names(name: str) -> None:
    assert policy.check_user(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-x",
        "a b",
        "a/b",
        "a:b",
        "X" * 129,
        "é",
        "{tag}",
        "a\nb",
        None,
        5,
        ".hidden",
        "alice\n",
        "\nalice",
    ],
)
def test_invalid_user_names(name: object) -> None:
    with pytest.raises(ValueError, match="user names"):
        policy.check_user(name)


def test_sub_users_and_usage_names() -> None:
    assert policy.sub_user("webapp", " s-42 ") == "webapp:s-42"
    with pytest.raises(ValueError):
        policy.sub_user("webapp", "a:b")
    assert policy.check_usage_name("webapp:s-42") == "webapp"
    assert policy.check_usage_name("alice") == "alice"
    assert policy.check_usage_name("::1") == "::1"
    assert policy.check_usage_name("10.1.2.3") == "10.1.2.3"
    with pytest.raises(ValueError):
        policy.check_usage_name("a:b:c")
    for bad in ("alice\n", "webapp:s-42\n", "10.1.2.3\n"):
        with pytest.raises(ValueError):
            policy.check_usage_name(bad)
    assert not policy.is_key_id("k0001020304ff\n")


def test_usage_names_and_their_kinds() -> None:
    cred = policy.credential_identity("AIzaX")
    assert policy.usage_subject("alice") == ("key", "alice")
    assert policy.usage_subject("webapp:s-42") == ("key", "webapp")
    assert policy.usage_subject("203.0.113.7") == ("anonymous", None)
    assert policy.usage_subject("2001:db8::1") == ("anonymous", None)
    assert policy.usage_subject(cred) == ("passthrough", None)
    # A key's user may be named like an address or a credential: asked for by kind.
    assert policy.usage_subject("203.0.113.7", "key") == ("key", "203.0.113.7")
    assert policy.usage_subject(cred, "key") == ("key", cred)
    for name, kind in (("alice", "anonymous"), ("2001:DB8::1", "anonymous"), ("alice", "passthrough")):
        with pytest.raises(ValueError):
            policy.usage_subject(name, kind)
    with pytest.raises(ValueError, match="kind"):
        policy.usage_subject("alice", "robot")


@given(st.text(max_size=140))
def test_accepted_user_names_are_safe_everywhere(name: str) -> None:
    """Whatever check_user accepts is usable in a store key, a log line and a URL segment."""
    try:
        policy.check_user(name)
    except ValueError:
        return
    assert 1 <= len(name) <= 128
    assert name.isascii() and name.isprintable()
    assert not set(name) & set("/:{}% \t\"'\\?#")


# --- client address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # An untrusted peer: its X-Forwarded-For is ignored entirely.
        ("203.0.113.5", ["1.2.3.4"], "203.0.113.5"),
        # A trusted proxy: the right-most untrusted entry is the client.
        ("10.0.0.2", ["198.51.100.7"], "198.51.100.7"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.1.1.1"], "198.51.100.7"),
        ("10.0.0.2", ["6.6.6.6", "198.51.100.7, 192.168.1.7"], "198.51.100.7"),
        # Trusted proxy, no header: the proxy itself.
        ("10.0.0.2", [], "10.0.0.2"),
        # Every entry trusted: the left-most one (nearest the client).
        ("10.0.0.2", ["10.9.9.9, 10.8.8.8"], "10.9.9.9"),
        # Garbage stops the walk at the last trusted hop; nothing to its left is believed.
        ("10.0.0.2", ["1.1.1.1, unknown"], "10.0.0.2"),
        ("10.0.0.2", ["1.1.1.1, garbage, 10.3.3.3"], "10.3.3.3"),
        # Ports and brackets, IPv6, IPv4-mapped peers.
        ("10.0.0.2", ["198.51.100.7:4711"], "198.51.100.7"),
        ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("fd00::1", ["2001:db8::2"], "2001:db8::2"),
        ("::ffff:10.0.0.2", ["198.51.100.9"], "198.51.100.9"),
        ("not-an-ip", ["1.2.3.4"], "not-an-ip"),
    ],
)
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert policy.client_address(peer, xff, TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert policy.client_address("10.0.0.2", ["1.2.3.4"], ()) == "10.0.0.2"


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.sampled_from(["junk", "", " "])
)


@given(peer=st.ip_addresses(v=4).map(str), entries=st.lists(addresses, max_size=6))
def test_client_address_is_never_spoofable(peer: str, entries: list[str]) -> None:
    """The result is the peer, an entry of the header, and never an entry to the left of an
    untrusted one (which a client could have written itself)."""
    found = policy.client_address(peer, [", ".join(entries)], TRUSTED)
    if not policy.is_trusted(ipaddress.ip_address(peer), TRUSTED):
        assert found == peer
        return
    parsed = [policy.parse_address(e) for e in entries if e.strip()]  # empty list items carry nothing
    walked = []
    for address in reversed(parsed):
        if address is None:
            break
        walked.append(str(address))
        if not policy.is_trusted(address, TRUSTED):
            break
    assert found == (walked[-1] if walked else peer)


# --- RateLimit header fields -----------------------------------------------------------------------


def test_rate_limit_fields() -> None:
    minute, hour = Window("minute", 60.0, 10), Window("hour", 3600.0, 100)
    assert (
        policy.rate_limit_policy([("minute", minute), ("hour", hour), ("ip-minute", minute)])
        == '"minute";q=10;w=60, "hour";q=100;w=3600, "ip-minute";q=10;w=60'
    )
    assert policy.rate_limit([("minute", 7, 41.2), ("hour", -3, 0.0)]) == '"minute";r=7;t=42, "hour";r=0;t=0'
    assert policy.rate_limit_policy([('a"b\\c', Window("s", 1.5, 1))]) == '"a\\"b\\\\c";q=1;w=2'
    with pytest.raises(ValueError):
        policy.rate_limit([("minute", 1, float("inf"))])


SF_ITEM = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"(?:;[a-z]+=\d+)+$')


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20),
            st.integers(0, 10**6),
            st.floats(0, 10**6),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_rate_limit_is_a_structured_field_list(states: list[tuple[str, int, float]]) -> None:
    """Every member is an sf-string with integer parameters, as the draft requires; t rounds
    up so a client that waits t seconds is never early."""
    rendered = policy.rate_limit(states)
    members = _split_members(rendered)
    assert len(members) == len(states)
    for member, (_, remaining, reset) in zip(members, states, strict=True):
        assert SF_ITEM.match(member), member
        params = dict(p.split("=") for p in member.rsplit('"', 1)[1].lstrip(";").split(";"))
        assert int(params["r"]) == remaining
        assert int(params["t"]) >= reset - 1e-9 and int(params["t"]) < reset + 1


def _split_members(rendered: str) -> list[str]:
    """Split an sf-list on the commas outside quoted strings."""
    members, current, quoted, escaped = [], "", False, False
    for char in rendered:
        if quoted and escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append(current.strip())
            current = ""
            continue
        current += char
    members.append(current.strip())
    return members

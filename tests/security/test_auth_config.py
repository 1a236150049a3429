"""security.tokens in the mesh file: one ${VAR} per token, refused otherwise at FILE:LINE:COL, never shown."""

from __future__ import annotations

import contextlib
import functools
import hmac
from collections.abc import Callable

import grpc
import pytest

from meshgate.config import ClientToken, ConfigError, MeshConfig, SecuritySettings, check_compatible, load_config_text
from meshgate.gateway._auth import Authenticator, AuthError, peer_host
from meshgate.router import pattern_covers
from tests.security._tokens import ADMIN_TOKEN, AUDIT_TOKEN, ENV, ORDERS_TOKEN, TOKENS, WRONG_TOKEN

REGIONS = """\
event_mesh:
  regions:
    - name: a
      kind: embedded
"""


def load(security: str, env: dict[str, str] | None = None, *, limits: str = "") -> MeshConfig:
    text = REGIONS + "  security:\n" + security
    if limits:
        text += "  settings:\n    limits:\n" + limits
    return load_config_text(text, "mesh.yaml", env=ENV if env is None else env)


def errors(security: str, env: dict[str, str] | None = None, *, limits: str = "") -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(security, env, limits=limits)
    return list(err.value.lines)


def test_tokens_load_with_their_allow_lists() -> None:
    config = load(TOKENS)
    orders, auditor, ops = config.security.tokens
    assert orders == ClientToken(
        name="orders-service",
        token=ORDERS_TOKEN,
        variable="ORDERS_TOKEN",
        publish=("orders/>",),
        subscribe=("orders/>",),
        admin=False,
        line=7,
    )
    assert auditor.subscribe == ("orders/eu/>", "audit/>") and not auditor.admin
    assert ops.admin and ops.publish == () and ops.subscribe == ()
    # Without a security block, nobody needs a token.
    assert load_config_text(REGIONS).security == SecuritySettings()


def test_repr_and_str_of_the_config_never_show_a_token() -> None:
    config = load(TOKENS)
    for text in (repr(config), str(config), repr(config.security), repr(config.security.tokens[0])):
        for token in (ORDERS_TOKEN, AUDIT_TOKEN, ADMIN_TOKEN):
            assert token not in text
    assert "orders-service" in repr(config.security) and "ORDERS_TOKEN" in repr(config.security)
    auth = Authenticator(config.security)
    assert all(t not in repr(auth) for t in (ORDERS_TOKEN, AUDIT_TOKEN, ADMIN_TOKEN))
    client = auth.identify([("authorization", f"Bearer {ORDERS_TOKEN}")], "ipv4:127.0.0.1:5000")
    assert ORDERS_TOKEN not in repr(client) and "orders-service" in repr(client)


def test_a_literal_token_is_refused_where_it_is_and_not_repeated() -> None:
    secret = "literal-secret-value-1234567890"
    lines = errors(f"    tokens:\n      - name: x\n        token: {secret}\n")
    assert lines == [
        "mesh.yaml:8:16: event_mesh.security.tokens[0].token: a token written in the file is refused (files get"
        " copied, committed and shown); write one environment variable reference such as ${ORDERS_TOKEN} and set"
        " that variable where the gateway runs"
    ]
    # A literal of another type, or text around the reference, is refused the same way, and never shown.
    for value in ("12345678901234567890", f'"{secret}-${{ORDERS_TOKEN}}"', '"${ORDERS_TOKEN}${AUDIT_TOKEN}"'):
        lines = errors(f"    tokens:\n      - name: x\n        token: {value}\n")
        assert len(lines) == 1 and lines[0].startswith("mesh.yaml:8:16: event_mesh.security.tokens[0].token: "), lines
        assert secret not in lines[0] and ORDERS_TOKEN not in lines[0] and AUDIT_TOKEN not in lines[0]


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        (
            "${ORDERS_TOKEN:-fallback-token-0123456789}",
            ENV,
            "a token cannot have a default (${NAME:-...}): the default would be a secret in the file; write ${NAME}"
            " alone",
        ),
        (
            "${NOT_SET_TOKEN}",
            ENV,
            "environment variable NOT_SET_TOKEN is not set; set it to the client's token where the gateway runs"
            " (a token has no default)",
        ),
        (
            "${EMPTY_TOKEN}",
            {"EMPTY_TOKEN": ""},
            "environment variable EMPTY_TOKEN is empty; set it to the client's token",
        ),
        (
            "${SHORT_TOKEN}",
            {"SHORT_TOKEN": "abc123"},
            "environment variable SHORT_TOKEN holds a token of 6 characters; use at least 16"
            " (e.g. openssl rand -hex 32)",
        ),
        (
            "${SPACED_TOKEN}",
            {"SPACED_TOKEN": "has a space in it 0123456789"},
            "environment variable SPACED_TOKEN holds characters a gRPC header cannot carry; a token is printable ASCII"
            " without spaces (e.g. from openssl rand -hex 32)",
        ),
        ("", ENV, "the token is empty; write one environment variable reference such as ${ORDERS_TOKEN}"),
    ],
)
def test_unusable_token_variables_are_refused(value: str, env: dict[str, str], message: str) -> None:
    lines = errors(f"    tokens:\n      - name: x\n        token: {value}\n", env)
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"event_mesh.security.tokens[0].token: {message}"), lines
    assert lines[0].startswith("mesh.yaml:8:")
    assert "fallback-token" not in lines[0] and "abc123" not in lines[0]


def test_names_and_tokens_are_unique_patterns_valid_and_the_list_not_empty() -> None:
    lines = errors(
        """\
    tokens:
      - name: a
        token: ${ORDERS_TOKEN}
        publish: ["orders//x"]
      - name: a
        token: ${SAME_AS_ORDERS}
        subscribe: ["orders/>/x"]
      - name: "-bad name"
        token: ${AUDIT_TOKEN}
        admin: "yes"
""",
        {**ENV, "SAME_AS_ORDERS": ORDERS_TOKEN},
    )
    assert lines == [
        "mesh.yaml:9:19: event_mesh.security.tokens[0].publish[0]: pattern 'orders//x': level 2 is empty;"
        " a level is 1 to 64 characters of A-Z a-z 0-9 - _",
        "mesh.yaml:10:15: event_mesh.security.tokens[1].name: client 'a' is listed twice (first as tokens[0]);"
        " give each client its own name",
        "mesh.yaml:11:16: event_mesh.security.tokens[1].token: client 'a' has the same token as tokens[0] ('a');"
        " give each client its own token",
        "mesh.yaml:12:21: event_mesh.security.tokens[1].subscribe[0]: pattern 'orders/>/x': '>' is level 2 of 3;"
        " '>' (one or more levels) may only be the last level, use '*' for exactly one level",
        "mesh.yaml:13:15: event_mesh.security.tokens[2].name: expected a client name of 1 to 64 of A-Z a-z 0-9 . _ -,"
        " got the string '-bad name'",
        "mesh.yaml:15:16: event_mesh.security.tokens[2].admin: expected true or false, got a string",
    ]
    # An empty list would silently leave clients unauthenticated.
    assert errors("    tokens: []\n") == [
        "mesh.yaml:6:13: event_mesh.security.tokens: expected a list of at least one client (name, token, publish,"
        " subscribe, admin); without tokens, remove the key, got an empty list"
    ]


def test_a_numeric_looking_token_keeps_its_text() -> None:
    # Unquoted ${VAR} takes the type of its text (0x... would become an int); a token stays the text.
    config = load("    tokens:\n      - name: x\n        token: ${HEX_TOKEN}\n", {"HEX_TOKEN": "0x1234567890abcdef00"})
    assert config.security.tokens[0].token == "0x1234567890abcdef00"


def test_limit_cross_checks() -> None:
    lines = errors(
        "    tokens:\n      - name: x\n        token: ${ORDERS_TOKEN}\n",
        limits="      max_message_bytes: 512KiB\n      max_metadata_bytes: 1KiB\n      client_burst: 10\n",
    )
    assert lines == [
        "mesh.yaml:11:26: event_mesh.settings.limits.max_message_bytes: max_message_bytes (524288 bytes) cannot carry"
        " one event of max_data_bytes (1048576) plus max_attributes_bytes (8192) and framing; raise it to at least"
        " 1073152 or lower max_data_bytes",
        "mesh.yaml:12:27: event_mesh.settings.limits.max_metadata_bytes: max_metadata_bytes of 1024 bytes leaves no"
        " room for gRPC's own headers and a token; use at least 4096 (4KiB)",
        "mesh.yaml:13:21: event_mesh.settings.limits.client_burst: client_burst applies only with a client_rate above"
        " 0; set client_rate or remove client_burst",
    ]
    # Unset, max_message_bytes is 4MiB, or room for one event of a larger max_data_bytes.
    config = load(
        "    tokens:\n      - name: x\n        token: ${ORDERS_TOKEN}\n", limits="      max_data_bytes: 8MiB\n"
    )
    assert config.settings.limits.max_message_bytes == 8 * 1024 * 1024 + 8192 + 16384
    assert load(TOKENS).settings.limits.max_message_bytes == 4 * 1024 * 1024


def test_server_size_limits_need_a_restart_tokens_and_rates_do_not() -> None:
    old = load(TOKENS)
    changed = load(TOKENS, limits="      max_message_bytes: 8MiB\n      max_metadata_bytes: 32KiB\n")
    assert check_compatible(old, changed, "a") == (
        "restart needed: region a's settings.limits.max_message_bytes 4194304 -> 8388608;"
        " settings.limits.max_metadata_bytes 16384 -> 32768"
    )
    live = load(
        TOKENS.replace('publish: ["orders/>"]', 'publish: ["orders/eu/>"]'),
        limits="      client_rate: 10\n      max_streams_per_client: 2\n      subscribe_buffer_events: 100\n",
    )
    assert check_compatible(old, live, "a") is None


# --- the authenticator ---------------------------------------------------------------------


def _auth() -> Authenticator:
    return Authenticator(load(TOKENS).security)


def _code(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AuthError) as err:
        fn()
    return err.value.code, err.value.message


def test_identify_by_bearer_token() -> None:
    auth = _auth()
    peer = "ipv4:10.1.2.3:41000"
    assert auth.identify([("authorization", f"Bearer {ORDERS_TOKEN}")], peer).name == "orders-service"
    # The scheme is case-insensitive (RFC 7235); keys arrive lower-case from gRPC.
    assert auth.identify([("authorization", f"bearer {ADMIN_TOKEN}")], peer).admin
    code, message = _code(lambda: auth.identify([], peer))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert message == (
        "this gateway requires a client token: send gRPC metadata 'authorization: Bearer <token>'"
        " (meshgate CLI: --token or MESHGATE_TOKEN)"
    )
    code, message = _code(lambda: auth.identify([("authorization", f"Bearer {WRONG_TOKEN}")], peer))
    assert code is grpc.StatusCode.UNAUTHENTICATED and WRONG_TOKEN not in message
    assert "not valid for this gateway" in message
    code, message = _code(lambda: auth.identify([("authorization", ORDERS_TOKEN)], peer))
    assert "is not 'Bearer <token>'" in message and ORDERS_TOKEN not in message
    code, message = _code(lambda: auth.identify([("authorization", "Bearer ")], peer))
    assert "is not 'Bearer <token>'" in message
    two = [("authorization", f"Bearer {ORDERS_TOKEN}"), ("authorization", f"Bearer {ADMIN_TOKEN}")]
    assert "send exactly one" in _code(lambda: auth.identify(two, peer))[1]
    # A prefix or an extension of a token is not the token.
    for near in (ORDERS_TOKEN[:-1], ORDERS_TOKEN + "0", ORDERS_TOKEN.upper()):
        assert _code(functools.partial(auth.identify, [("authorization", f"Bearer {near}")], peer))[0] is (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not say which entry (or whether any) matched."""
    auth = _auth()
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token in (ORDERS_TOKEN, ADMIN_TOKEN, WRONG_TOKEN, "x" * 500):
        calls.clear()
        with pytest.raises(AuthError) if token in (WRONG_TOKEN, "x" * 500) else contextlib.nullcontext():
            auth.identify([("authorization", f"Bearer {token}")], "ipv4:127.0.0.1:1")
        # Three entries, each compared as equal-length digests whatever the length sent.
        assert calls == [(32, 32)] * 3, token


def test_without_tokens_a_client_is_its_ip_address_and_may_do_anything() -> None:
    auth = Authenticator(SecuritySettings())
    client = auth.identify(None, "ipv4:10.0.0.7:51234")
    assert (client.name, client.key, client.authenticated) == ("10.0.0.7", "10.0.0.7", False)
    assert client.may_publish("any/topic") and client.may_subscribe(">") and client.admin
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_allow_lists() -> None:
    auth = _auth()
    orders = auth.identify([("authorization", f"Bearer {ORDERS_TOKEN}")], "ipv4:127.0.0.1:1")
    auditor = auth.identify([("authorization", f"Bearer {AUDIT_TOKEN}")], "ipv4:127.0.0.1:1")
    ops = auth.identify([("authorization", f"Bearer {ADMIN_TOKEN}")], "ipv4:127.0.0.1:1")
    assert orders.may_publish("orders/created") and orders.may_publish("orders/eu/1")
    assert not orders.may_publish("orders") and not orders.may_publish("audit/x")
    assert auditor.may_publish("audit/login") and not auditor.may_publish("audit/a/b")
    assert not ops.may_publish("orders/created")  # an empty list allows nothing
    assert orders.may_subscribe("orders/>") and orders.may_subscribe("orders/*/x")
    assert not orders.may_subscribe(">") and not orders.may_subscribe("*/created")
    assert auditor.may_subscribe("orders/eu/*") and not auditor.may_subscribe("orders/*")
    assert not ops.may_subscribe("orders/>")
    assert orders.publish_refusal("audit/x") == (
        "client 'orders-service' may not publish to topic 'audit/x': no pattern of its publish list (orders/>)"
        " matches it; publish within it, or have the operator add a pattern to the client's publish list"
        " (security.tokens in the mesh file)"
    )


@pytest.mark.parametrize(
    ("outer", "inner", "covered"),
    [
        ("orders/>", "orders/>", True),
        ("orders/>", "orders/*", True),
        ("orders/>", "orders/eu/>", True),
        ("orders/>", "orders", False),
        ("orders/*", "orders/>", False),
        ("orders/*", "orders/created", True),
        ("orders/created", "orders/*", False),
        ("*/created", "orders/created", True),
        ("*/created", "*/created", True),
        (">", ">", True),
        (">", "a/*/c", True),
        ("a/*/c", "a/b/c/d", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_pattern_covers(outer: str, inner: str, covered: bool) -> None:
    assert pattern_covers(outer, inner) is covered


def test_refresh_after_a_reload() -> None:
    old = _auth()
    orders = old.identify([("authorization", f"Bearer {ORDERS_TOKEN}")], "ipv4:127.0.0.1:1")
    narrowed = Authenticator(load(TOKENS.replace('publish: ["orders/>"]', 'publish: ["orders/eu/>"]')).security)
    again = narrowed.refresh(orders)
    assert again is not None and again.publish == ("orders/eu/>",)
    without = Authenticator(load(TOKENS.replace("token: ${ORDERS_TOKEN}", "token: ${SPARE_TOKEN}")).security)
    assert without.refresh(orders) is None
    assert "was removed from the mesh file" in orders.revoked_refusal()
    # Tokens turned on under an open anonymous call: it ends, and is told it needs a token.
    anonymous = Authenticator(SecuritySettings()).identify([], "ipv4:127.0.0.1:1")
    assert old.refresh(anonymous) is None
    assert anonymous.revoked_refusal() == (
        "a reload of the mesh file turned client tokens on; client at 127.0.0.1 sent none:"
        " reconnect with a token (authorization: Bearer <token>)"
    )
    # Tokens turned off: a client keeps its call, with no allow-lists.
    opened = Authenticator(SecuritySettings()).refresh(orders)
    assert opened is not None and opened.publish is None

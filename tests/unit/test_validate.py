"""gatewayha.validate: one validator per kind of value, and what each refuses."""

from __future__ import annotations

import pytest

from gatewayha import validate
from gatewayha.errors import GatewayError, InvalidValue

CLUSTER = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32

# Values no validator of a name accepts: traversal, separators, newlines, look-alikes, lengths.
HOSTILE = [
    None,
    42,
    b"0123456789abcdef0123456789abcdef",
    "",
    "../../etc/passwd",
    f"../{CLUSTER}",
    f"{CLUSTER}/..",
    f"{CLUSTER}\n",
    f"\n{CLUSTER}",
    f"{CLUSTER}\x00",
    f"{CLUSTER} ",
    CLUSTER.upper(),
    CLUSTER + "0",
    CLUSTER[:-1],
    CLUSTER * 100,
    "0123456789abcdef0123456789abcde\u0430",  # Cyrillic a
    "0123456789abcdef0123456789abcde\uff10",  # fullwidth 0
    "0123456789abcdef0123456789abcde\u0660",  # Arabic-Indic 0 (a Unicode digit)
    "x; rm -rf /",
    "--help",
]


def test_cluster_names_are_32_lowercase_hex():
    assert validate.cluster_name(CLUSTER) == CLUSTER
    assert validate.is_cluster_name(OTHER)


@pytest.mark.parametrize("value", HOSTILE)
def test_cluster_name_refuses(value):
    assert not validate.is_cluster_name(value)
    with pytest.raises(InvalidValue, match="invalid cluster name"):
        validate.cluster_name(value)


def test_invalid_value_is_a_value_error_and_a_gateway_error():
    with pytest.raises(ValueError):
        validate.cluster_name("x")
    with pytest.raises(GatewayError):
        validate.cluster_name("x")


def test_worker_names_are_their_cluster_and_a_short_suffix():
    for suffix in ("a", "0", "a1b2c3d4e5", "z" * 16):
        name = f"{CLUSTER}-{suffix}"
        assert validate.worker_name(name) == name
        assert validate.worker_name(name, CLUSTER) == name


@pytest.mark.parametrize(
    "suffix",
    ["", "-a", "A", "a/b", "a b", "x" * 17, "..", "a\n", "--help", "\u0430", "\uff41", "a\x00", "../../x"],
)
def test_worker_name_refuses_bad_suffixes(suffix):
    with pytest.raises(InvalidValue, match="invalid worker name"):
        validate.worker_name(f"{CLUSTER}-{suffix}")


@pytest.mark.parametrize("value", HOSTILE)
def test_worker_name_refuses_hostile_values(value):
    with pytest.raises(InvalidValue):
        validate.worker_name(value)


def test_a_worker_name_of_another_cluster_is_refused():
    with pytest.raises(InvalidValue, match="for cluster"):
        validate.worker_name(f"{OTHER}-a", CLUSTER)
    with pytest.raises(InvalidValue, match="invalid cluster name"):
        validate.worker_name(f"{CLUSTER}-a", "../x")


def test_unit_names_are_a_scheduler_or_a_worker_of_a_cluster():
    for unit in (f"{CLUSTER}-scheduler", f"{CLUSTER}-worker-a1", f"{CLUSTER}-worker-{'z' * 16}"):
        assert validate.unit_name(unit) == unit
        assert validate.is_unit_name(unit)


@pytest.mark.parametrize(
    "unit",
    [
        *HOSTILE,
        f"{CLUSTER}-scheduler\n",
        f"{CLUSTER}-scheduler.service",
        f"{CLUSTER}-worker-",
        f"{CLUSTER}-worker-{'z' * 17}",
        f"{CLUSTER}-worker-A",
        f"{CLUSTER}-worker",
        f"{CLUSTER}-nanny",
        f"../{CLUSTER}-scheduler",
        "gatewayha-api@8101",
        f"{CLUSTER.upper()}-scheduler",
    ],
)
def test_unit_name_refuses(unit):
    assert not validate.is_unit_name(unit)
    with pytest.raises(InvalidValue, match="invalid unit name"):
        validate.unit_name(unit)


def test_ipv4_addresses():
    for value in ("127.0.0.1", "10.0.0.1", "255.255.255.255", "0.0.0.0"):
        assert validate.ipv4(value) == value
    for value in (
        "localhost",
        "127.0.0.01",
        "256.0.0.1",
        "127.0.0",
        "127.0.0.1.",
        "127.0.0.1\n",
        " 127.0.0.1",
        "::1",
        "[::1]",
        "\uff11\uff12\uff17.0.0.1",
        "127.0.0.\u0661",
        "--host=0.0.0.0",
        None,
        2130706433,
    ):
        assert not validate.is_ipv4(value)
        with pytest.raises(InvalidValue, match="node.host: an IPv4 address"):
            validate.ipv4(value, "node.host")


def test_reported_addresses_follow_the_scheme_of_their_kind():
    assert validate.reported_address("scheduler_address", "tls://127.0.0.1:40001") == validate.Address(
        "tls", "127.0.0.1", 40001
    )
    assert str(validate.reported_address("dashboard_address", "http://10.1.2.3:8787")) == "http://10.1.2.3:8787"
    assert validate.reported_address("api_address", "https://127.0.0.1:1").port == 1
    assert validate.reported_address("api_address", "http://127.0.0.1:65535").scheme == "http"  # an older release's
    assert validate.reported_address("dashboard_address", "") is None  # no dashboard
    for key, value in [
        ("scheduler_address", "tcp://127.0.0.1:1"),
        ("scheduler_address", "https://127.0.0.1:1"),
        ("scheduler_address", ""),
        ("dashboard_address", "https://127.0.0.1:1"),
        ("api_address", "tls://127.0.0.1:1"),
        ("api_address", "ftp://127.0.0.1:1"),
        ("api_address", "javascript:alert(1)"),
    ]:
        with pytest.raises(InvalidValue, match=key):
            validate.reported_address(key, value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        5,
        "",
        "--help",
        "127.0.0.1:1",
        "tls://127.0.0.1",
        "tls://127.0.0.1:",
        "tls://127.0.0.1:0",
        "tls://127.0.0.1:65536",
        "tls://127.0.0.1:99999",
        "tls://127.0.0.1:080",
        "tls://127.0.0.1:+80",
        "tls://127.0.0.1:\uff18\uff10",  # fullwidth digits: int() would take them
        "tls://127.0.0.1:\u0668\u0660",  # Arabic-Indic digits
        "tls://user@127.0.0.1:1",  # user info
        "tls://user:pw@127.0.0.1:1",
        "tls://127.0.0.1:1@10.0.0.1:2",  # another host behind the user info
        "tls://127.0.0.1:1/",
        "tls://127.0.0.1:1/path",
        "tls://127.0.0.1:1?x=1",
        "tls://127.0.0.1:1#frag",
        "tls://127.0.0.1:1\n",
        "tls://127.0.0.1:1\nuse_backend x",
        "tls://evil host:1\nuse_backend x",
        " tls://127.0.0.1:1",
        "TLS://127.0.0.1:1",
        "tls://localhost:1",  # a name: routes need an address
        "tls://h:1",
        "tls://-x:1",
        "tls://a b:1",
        "tls://[::1]:1",
        "tls://127.0.0.01:1",
        "tls://999.0.0.1:1",
        "tls://127.0.0.1:1:2",
        "tls:///127.0.0.1:1",
        "tls:127.0.0.1:1",
        "tls://127.0.0.1:" + "1" * 1000,
        "tls://" + "1." * 1000 + "1:1",
    ],
)
def test_address_refuses(value):
    with pytest.raises(InvalidValue, match="expected tls://<IPv4 address>:<port>"):
        validate.address(value, ("tls",), "scheduler address")


def test_environment_names():
    for name in ("A", "_", "OMP_NUM_THREADS", "a1", "X" * 128):
        assert validate.is_env_name(name)
    for name in ("", "1X", "A-B", "A=B", "A B", "A\n", "\u00c4", "X" * 129, None, 3):
        assert not validate.is_env_name(name)


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith@example.org", "x_y-z", "A" * 64])
def test_user_names_accepted(name):
    assert validate.is_user_name(name)


@pytest.mark.parametrize(
    "name",
    [None, 5, "", "alice\n", "\nalice", "al ice", "alice\x00", "A" * 65, "alic\u0435", "ali/ce", "alice;", "ålice"],
)
def test_user_names_refused(name):
    """Names go into SQL rows, logs, the session cookie (``user|expiry|kid|mac``) and dashboard
    tokens: ASCII of a few kinds only, the whole string (a trailing newline was let through)."""
    assert not validate.is_user_name(name)

"""DATABASE_URL mistakes become one line that names the URL without its password."""

from __future__ import annotations

import psycopg.conninfo
import pytest
from asyncpg.connect_utils import _parse_connect_arguments

from app.store.dburl import BadDatabaseURL, DatabaseURL, _diagnose, redact

ASYNCPG_DEFAULTS = {
    "host": None, "port": None, "user": None, "password": None, "passfile": None,
    "database": None, "ssl": None, "direct_tls": None, "statement_cache_size": 100,
    "max_cached_statement_lifetime": 300, "max_cacheable_statement_size": 15360,
    "command_timeout": None, "server_settings": None, "target_session_attrs": None,
    "krbsrvname": None, "gsslib": None, "service": None, "servicefile": None,
}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("notaurl", "is not a URL: 'notaurl'"),
        ("mysql://root:pw@db/x", "is not a PostgreSQL URL: mysql://root:***@db/x"),
        ("postgresql://u:pw@h:abc/x", "has a host or port that cannot be read (port 'abc')"),
        ("postgresql://u:pw@h1,h2/x?port=1,2,3", "(2 hosts but 3 ports)"),
        ("postgresql://u:pw@/x?host=a,,b", "(an empty host in a list of several)"),
        ("postgresql://u:pw@h:70000/x", "(port '70000')"),
        ("postgresql://u:pw@a,b/x?target_session_attrs=rw", "target_session_attrs='rw', not one"),
        ("postgresql://u@h/x?password=pw&port=x", "?password=***&port=x"),
        ("postgresql://u:pw@h/x?connect_timeout=soon", "connect_timeout='soon', not a number"),
    ],
)
def test_bad_urls_are_one_line_without_the_password(raw: str, words: str):
    with pytest.raises(BadDatabaseURL) as caught:
        DatabaseURL.parse(raw)
    message = str(caught.value)
    assert words in message and "\n" not in message and ":pw@" not in message


MULTI = (("h1", 5432), ("h2", 5433))


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:p%40ss@h1:5432,h2:5433/db",
        "postgresql://u:p%40ss@/db?host=h1,h2&port=5432,5433",
        "postgres://u@h1:5432,h2:5433/db?password=p%40ss",
        "postgresql+asyncpg://u:p%40ss@/db?host=h1:5432,h2:5433",
        "postgresql+asyncpg://u:p%40ss@/db?host=h1:5432&host=h2:5433",  # SQLAlchemy's spelling
    ],
)
def test_several_hosts_in_either_form_are_one_address(raw: str):
    url = DatabaseURL.parse(raw)
    assert (url.hosts, url.database, url.user, url.password) == (MULTI, "db", "u", "p@ss")
    # Several hosts and no wish given: the primary, whichever host it is now.
    assert url.target_session_attrs == "read-write"
    # ... and a host that never answers costs 10 s per connection (psycopg's default: 130).
    wishes = "target_session_attrs=read-write&connect_timeout=10"
    assert url.libpq() == f"postgresql://u:p%40ss@h1:5432,h2:5433/db?{wishes}"
    assert url.redacted() == f"postgresql://u:***@h1:5432,h2:5433/db?{wishes}"
    assert DatabaseURL.parse(url.libpq()) == url


def test_the_drivers_get_what_they_read():
    url = DatabaseURL.parse(
        "postgresql://u@[::1]:5432,db2/x?target_session_attrs=primary&connect_timeout=3"
        "&keepalives_idle=5&sslmode=prefer"
    )
    assert url.hosts == (("::1", 5432), ("db2", None)) and url.target_session_attrs == "primary"
    assert psycopg.conninfo.conninfo_to_dict(url.libpq()) == {
        "host": "::1,db2",
        "port": "5432,",
        "user": "u",
        "dbname": "x",
        "target_session_attrs": "primary",
        "connect_timeout": "3",
        "keepalives_idle": "5",
        "sslmode": "prefer",
    }
    # asyncpg's DSN parser reads libpq's URI; connect_timeout is its own keyword; a libpq
    # option it does not know would reach the server as a setting: left out.
    assert url.asyncpg_connect_args() == {
        "dsn": "postgresql://u@[::1]:5432,db2/x?target_session_attrs=primary&sslmode=prefer",
        "timeout": 3.0,
    }
    dsn = url.asyncpg_connect_args()["dsn"]
    addrs, params, _ = _parse_connect_arguments(dsn=dsn, **ASYNCPG_DEFAULTS)
    assert addrs == [("::1", 5432), ("db2", 5432)]
    assert params.target_session_attrs == "primary"


def test_a_connect_timeout_of_0_waits_as_long_as_it_takes():
    url = DatabaseURL.parse("postgresql://u@a,b/x?connect_timeout=0")
    assert url.asyncpg_connect_args()["timeout"] is None  # libpq's meaning, not "at once"


def test_one_host_keeps_its_wish_and_socket_directories_go_in_the_query():
    assert DatabaseURL.parse("postgresql://h/db").target_session_attrs == "any"
    embedded = DatabaseURL.parse("postgresql://postgres:@/tiergate?host=/tmp/pg sock")
    assert embedded.hosts == (("/tmp/pg sock", None),) and embedded.password is None
    assert embedded.libpq() == "postgresql://postgres@/tiergate?host=/tmp/pg%20sock"
    assert embedded.redacted() == "postgresql://postgres@/tiergate?host=/tmp/pg sock"
    two = DatabaseURL.parse("postgresql://u@/db?host=/a,/b&port=5433")
    assert two.hosts == (("/a", 5433), ("/b", 5433))
    assert two.libpq() == (
        "postgresql://u@/db?host=/a,/b&port=5433,5433&target_session_attrs=read-write"
        "&connect_timeout=10"
    )


def test_redact_hides_passwords_even_of_unreadable_urls():
    assert redact("postgresql://u:p@ss@h:abc/x") == "postgresql://u:***@h:abc/x"
    assert redact("postgresql://u@h/x") == "postgresql://u@h/x"
    assert DatabaseURL.parse("postgresql://u:pw@h:5/x").redacted() == "postgresql://u:***@h:5/x"


@pytest.mark.parametrize(
    ("libpq", "reason"),
    [
        (
            'connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?",
            "connection refused",
        ),
        (
            'connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL:  password'
            ' authentication failed for user "tg"',
            "the password was refused",
        ),
        ('... failed: FATAL:  database "nope" does not exist', 'there is no database "nope"'),
        ('could not translate host name "db" to address', "unknown host name"),
        ("something new\nFATAL:  the server is shutting down", "the server is shutting down"),
        ("... failed: session is read-only", "no host is a writable primary"),
        ("... failed: server is in hot standby mode", "no host is a writable primary"),
    ],
)
def test_libpq_errors_are_diagnosed(libpq: str, reason: str):
    assert _diagnose(libpq)[0] == reason


def test_a_direct_address_declares_a_transaction_pooler_and_takes_the_sessions():
    pooled = DatabaseURL.parse("postgresql://u:pw@bouncer:6432/tg")
    assert not pooled.transaction_pooled and pooled.session() is pooled
    direct = DatabaseURL.parse("postgresql://u:pw@db:5432/tg", "DATABASE_DIRECT_URL")
    both = pooled.with_direct(direct)
    assert both.transaction_pooled and both.session() == direct
    assert both.libpq() == pooled.libpq()  # statements still go through the pooler
    other = both.with_database("other")
    assert other.database == "other" and other.session().database == "other"


def test_a_bad_direct_address_names_its_own_setting():
    with pytest.raises(BadDatabaseURL, match=r"^DATABASE_DIRECT_URL is not a URL: 'nope'"):
        DatabaseURL.parse("nope", "DATABASE_DIRECT_URL")

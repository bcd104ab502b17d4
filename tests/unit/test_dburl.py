"""DATABASE_URL mistakes become one line that names the URL without its password."""

from __future__ import annotations

import pytest

from app.store.dburl import BadDatabaseURL, DatabaseURL, _diagnose, redact


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("notaurl", "is not a URL: 'notaurl'"),
        ("mysql://root:pw@db/x", "is not a PostgreSQL URL: mysql://root:***@db/x"),
        ("postgresql://u:pw@h:abc/x", "has a host or port that cannot be read"),
    ],
)
def test_bad_urls_are_one_line_without_the_password(raw: str, words: str):
    with pytest.raises(BadDatabaseURL) as caught:
        DatabaseURL.parse(raw)
    message = str(caught.value)
    assert words in message and "\n" not in message and ":pw@" not in message


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

"""One database address, spelled for each driver that needs it.

``DATABASE_URL`` is read as libpq reads a connection URI, several hosts included, in both of
its forms: ``postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write`` and
``postgresql://u:p@/db?host=h1,h2&port=5432,5433`` (a host may be a Unix-socket directory).
With several hosts, tiergate asks for ``target_session_attrs=read-write`` (every connection
lands on the primary, whichever host it is now) and ``connect_timeout=10`` (a host that never
answers costs 10 s, not psycopg's 130) unless the URL says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import asyncpg
import psycopg

CONNECT_TIMEOUT_S = 5
EXPECTED = "postgresql://user:password@host:5432,host2:5432/database"
UNSET_HINT = "or unset DATABASE_URL to use the embedded PostgreSQL"
# libpq's values (asyncpg >= 0.28 knows the same six).
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
MULTI_HOST_DEFAULT = "read-write"
# Each host's connection attempt, with several hosts (``connect_timeout`` overrides it).
HOST_TIMEOUT_S = 10
# What asyncpg's DSN parser reads; it would send any other parameter to the server as a
# setting (which fails): libpq's client options without an asyncpg equivalent (keepalives,
# tcp_user_timeout, ...) apply to psycopg's connections only.
ASYNCPG_PARAMS = frozenset({
    "passfile", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslnegotiation", "sslcrl",
    "sslpassword", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "target_session_attrs", "krbsrvname", "gsslib", "service", "servicefile", "application_name",
})  # fmt: skip
SCHEME = re.compile(r"^postgres(?:ql)?(?:\+\w+)?$")

Host = tuple[str, int | None]  # a host name, an address or a socket directory; its port


class DatabaseProblem(Exception):
    """A database tiergate cannot use; the message is one line: what, where, what to do."""


class BadDatabaseURL(DatabaseProblem, ValueError):
    """``DATABASE_URL`` is not a PostgreSQL URL."""


class DatabaseUnreachable(DatabaseProblem):
    """The server at ``DATABASE_URL`` refused the connection (or did not answer)."""


def redact(raw: str) -> str:
    """``raw`` with the password of any ``scheme://user:password@`` part shown as ``***``."""
    raw = re.sub(r"(://[^:/@]*:)[^/?#]*@", r"\1***@", raw)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", raw)


@dataclass(frozen=True)
class DatabaseURL:
    """A PostgreSQL address: ``libpq()`` for psycopg (procrastinate, the CLI's checks),
    ``asyncpg_connect_args()`` for asyncpg (SQLAlchemy's engine, the LISTEN connections).

    ``direct`` (``DATABASE_DIRECT_URL``) is the same database reached with a session of its
    own: set when this address is a pooler in transaction mode (PgBouncer's
    ``pool_mode = transaction``), where only single transactions may go.
    """

    hosts: tuple[Host, ...] = ()  # none: libpq's default (the local socket)
    database: str | None = None
    user: str | None = None
    password: str | None = None
    params: tuple[tuple[str, str], ...] = ()  # every other libpq parameter, in order
    direct: DatabaseURL | None = None

    @classmethod
    def parse(cls, raw: str, setting: str = "DATABASE_URL") -> DatabaseURL:
        """Read a libpq connection URI; ``BadDatabaseURL`` (one line, no password, naming
        ``setting``) if it is not one."""
        scheme, sep, rest = raw.partition("://")
        if not sep or not scheme:
            raise _bad(setting, "is not a URL", repr(redact(raw)))
        if not SCHEME.match(scheme):
            raise _bad(setting, "is not a PostgreSQL URL", redact(raw))
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hostspec = netloc.rpartition("@")
        user, _, password = userinfo.partition(":") if at else ("", "", "")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            # SQLAlchemy's multi-host spelling repeats the key: ?host=h1:5432&host=h2:5432
            params[key] = f"{params[key]},{value}" if key == "host" and key in params else value
        try:
            hosts = _hosts(
                [unquote(h) for h in _split_hosts(hostspec)],
                params.pop("host", None),
                params.pop("port", None),
            )
        except ValueError as exc:
            raise _bad(
                setting, f"has a host or port that cannot be read ({exc})", redact(raw)
            ) from None
        database = params.pop("dbname", None) or unquote(path) or None
        login = params.pop("user", None) or unquote(user) or None
        secret = params.pop("password", None) or unquote(password) or None
        attrs = params.get("target_session_attrs")
        if attrs is not None and attrs not in SESSION_ATTRS:
            raise _bad(
                setting,
                f"has target_session_attrs={attrs!r}, not one of {', '.join(SESSION_ATTRS)}",
                redact(raw),
            )
        timeout = params.get("connect_timeout")
        if timeout is not None and not timeout.isdigit():
            raise _bad(
                setting, f"has connect_timeout={timeout!r}, not a number of seconds", redact(raw)
            )
        if len(hosts) > 1:
            params.setdefault("target_session_attrs", MULTI_HOST_DEFAULT)
            params.setdefault("connect_timeout", str(HOST_TIMEOUT_S))
        return cls(hosts, database, login, secret, tuple(params.items()))

    @property
    def target_session_attrs(self) -> str:
        return dict(self.params).get("target_session_attrs", "any")

    def redacted(self) -> str:
        """The URL to show a person: its password as ``***`` (a socket path unescaped)."""
        return self._render(hide_password=True, escape=False)

    def libpq(self) -> str:
        """The connection URI as libpq (psycopg) reads it."""
        return self._render(hide_password=False, escape=True)

    def asyncpg_connect_args(self) -> dict[str, object]:
        """Keyword arguments for ``asyncpg.connect``: its DSN parser reads libpq's URI,
        hosts lists and ``target_session_attrs`` included; ``connect_timeout`` is its
        ``timeout`` (0: none, as in libpq); libpq options it has no equivalent for are left
        out."""
        params = dict(self.params)
        timeout = params.pop("connect_timeout", None)
        kept = tuple((k, v) for k, v in params.items() if k in ASYNCPG_PARAMS)
        dsn = replace(self, params=kept).libpq()
        if timeout is None:
            return {"dsn": dsn}
        return {"dsn": dsn, "timeout": float(timeout) or None}

    def probe(self, setting: str = "DATABASE_URL") -> None:
        """Connect once; raise ``DatabaseUnreachable`` saying why not and what to do."""
        try:
            with psycopg.connect(self.libpq(), connect_timeout=CONNECT_TIMEOUT_S):
                pass
        except psycopg.OperationalError as exc:
            reason, hint = _diagnose(str(exc))
            raise DatabaseUnreachable(
                f"cannot connect to the database at {self.redacted()} ({setting}): {reason}; {hint}"
            ) from None

    def with_database(self, name: str) -> DatabaseURL:
        direct = None if self.direct is None else self.direct.with_database(name)
        return replace(self, database=name, direct=direct)

    def with_direct(self, direct: DatabaseURL) -> DatabaseURL:
        """This address as a transaction-mode pooler, ``direct`` for what needs a session."""
        return replace(self, direct=direct)

    @property
    def transaction_pooled(self) -> bool:
        """Whether consecutive transactions may run on different server sessions."""
        return self.direct is not None

    def session(self) -> DatabaseURL:
        """Where a session of its own goes (LISTEN, session advisory locks, migrations)."""
        return self.direct or self

    def with_login(self, user: str | None, password: str | None) -> DatabaseURL:
        return replace(self, user=user, password=password)

    def with_hosts(self, *hosts: Host) -> DatabaseURL:
        """The same database and login on other hosts (``target_session_attrs`` kept)."""
        return replace(self, hosts=tuple(hosts))

    def _render(self, *, hide_password: bool, escape: bool) -> str:
        def q(text: str, safe: str = "") -> str:
            return quote(text, safe=safe) if escape else text

        login = q(self.user or "")
        if self.password:
            login += ":" + ("***" if hide_password else q(self.password))
        query = list(self.params)
        in_netloc = all(host and not host.startswith("/") for host, _ in self.hosts)
        if in_netloc:
            netloc = ",".join(_netloc_host(host, port) for host, port in self.hosts)
        else:
            netloc = ""
            ports = [port for _, port in self.hosts]
            query.insert(0, ("host", ",".join(host for host, _ in self.hosts)))
            if any(ports):
                query.insert(1, ("port", ",".join(str(port or 5432) for port in ports)))
        text = "postgresql://" + (f"{login}@" if login else "") + netloc
        text += "/" + q(self.database or "")
        if query:
            text += "?" + "&".join(f"{key}={q(value, '/,')}" for key, value in query)
        return text


async def connect_asyncpg(url: DatabaseURL, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect`` to the first of ``url``'s hosts that answers and matches its
    ``target_session_attrs``, trying them in turn as libpq does: each host within
    ``connect_timeout`` (else ``HOST_TIMEOUT_S``); refused, silent, starting or unwanted
    (a standby) means the next host; an authentication failure ends the search. (asyncpg's
    own multi-host connect has one timeout for all hosts: a silent first host would use it
    up, and the new primary behind it would never be tried.)"""
    args = url.asyncpg_connect_args()
    if len(url.hosts) < 2 or url.target_session_attrs == "prefer-standby":
        return await asyncpg.connect(**args, **kwargs)
    timeout = args.get("timeout", HOST_TIMEOUT_S)  # None: connect_timeout=0, no limit
    failure: BaseException | None = None
    for host in url.hosts:
        one = url.with_hosts(host).asyncpg_connect_args() | {"timeout": timeout}
        try:
            return await asyncpg.connect(**one, **kwargs)
        except (
            OSError,
            TimeoutError,
            asyncpg.CannotConnectNowError,
            asyncpg.TargetServerAttributeNotMatched,
        ) as exc:
            failure = exc
    assert failure is not None
    raise failure


def _bad(setting: str, problem: str, shown: str) -> BadDatabaseURL:
    return BadDatabaseURL(f"{setting} {problem}: {shown}; expected {EXPECTED}, {UNSET_HINT}")


def _split_hosts(hostspec: str) -> list[str]:
    """``h1:5432,[::1]:5433`` as its items (an IPv6 address is bracketed)."""
    return re.split(r",(?![^\[]*\])", hostspec) if hostspec else []


def _hosts(netloc: list[str], host_param: str | None, port_param: str | None) -> tuple[Host, ...]:
    """The hosts of the URI's authority, or of ``?host=``/``?port=`` (which win, as in libpq).

    ``?host=`` items may carry their port as SQLAlchemy writes them (``h1:5432``,
    ``[::1]:5432``); a bare IPv6 address (``::1``) and a socket directory are hosts alone.
    """
    names: list[str] = []
    ports: list[int | None] = []
    items = host_param.split(",") if host_param is not None else netloc
    for item in items:
        alone = item.startswith("/") or (host_param is not None and item.count(":") > 1)
        found = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(.*))?", item)
        if alone or found is None:
            names.append(item)
            ports.append(None)
        else:
            names.append(found[1].strip("[]"))
            ports.append(_port(found[2]) if found[2] is not None else None)
    if port_param is not None:
        given = [_port(p) if p else None for p in port_param.split(",")]
        if len(given) == 1:
            given *= max(len(names), 1)
        if names and len(given) != len(names):
            raise ValueError(f"{len(names)} hosts but {len(given)} ports")
        if not names:
            names = [""] * len(given)
        ports = given
    if len(names) > 1 and not all(names):
        raise ValueError("an empty host in a list of several")
    return tuple(zip(names, ports, strict=True)) if any(names) or any(ports) else ()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r}")
    return int(text)


def _netloc_host(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown + (f":{port}" if port else "")


def _diagnose(message: str) -> tuple[str, str]:
    """libpq's (often multi-line) error as a short reason and what to do about it."""
    text = message.lower()
    user_hint = f"check the user and password in DATABASE_URL, {UNSET_HINT}"
    if "password authentication failed" in text:
        return "the password was refused", user_hint
    if "no password supplied" in text:
        return "the server wants a password", user_hint
    if found := re.search(r'database "([^"]+)" does not exist', message):
        return (
            f'there is no database "{found[1]}"',
            f"create it (createdb {found[1]}) or fix the name in DATABASE_URL",
        )
    if found := re.search(r'role "([^"]+)" does not exist', message):
        return f'there is no user "{found[1]}"', user_hint
    server_hint = f"is PostgreSQL running there? Start it or fix host and port, {UNSET_HINT}"
    if "read-only" in text or "hot standby" in text or "is not the primary" in text:
        return (
            "no host is a writable primary",
            "promote a standby, or name the primary among the hosts of DATABASE_URL",
        )
    if "connection refused" in text:
        return "connection refused", server_hint
    if "could not translate host name" in text or "name or service not known" in text:
        return "unknown host name", f"fix the host in DATABASE_URL, {UNSET_HINT}"
    if "timeout expired" in text:
        return f"no answer within {CONNECT_TIMEOUT_S} s", server_hint
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    last = lines[-1] if lines else message
    return last.rpartition("FATAL:")[2].strip() or last, f"fix DATABASE_URL, {UNSET_HINT}"

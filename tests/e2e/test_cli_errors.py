"""What a new user gets wrong in the first hour: one clear line, a non-zero exit, no traceback.

Every test runs the real ``tiergate`` console script of the venv as a subprocess; the database
ones use a real embedded PostgreSQL of their own (``home``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.store.embedded import EmbeddedPostgres
from app.testing.processes import base_env, free_port

TIERGATE = str(Path(sys.executable).parent / "tiergate")
UNSET = "or unset DATABASE_URL to use the embedded PostgreSQL"
EXPECTED = "expected postgresql://user:password@host:5432,host2:5432/database"


def tiergate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``tiergate ARGS`` from ``cwd`` with only ``env`` of tiergate's variables set."""
    return subprocess.run(
        [TIERGATE, *args],
        cwd=cwd,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(run: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single line a failed command printed on stderr."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``TIERGATE_HOME`` whose embedded PostgreSQL ``tiergate migrate`` created."""
    home = tmp_path_factory.mktemp("cli-errors") / "home"
    made = tiergate("migrate", cwd=home.parent, TIERGATE_HOME=str(home))
    assert made.returncode == 0, made.stderr
    yield home
    server = EmbeddedPostgres(home)
    server.start(create=False)
    server.stop()


COMMANDS = [
    ["serve", "--port", "0"],
    ["migrate"],
    ["keys", "list"],
    ["keys", "create", "--name", "x"],
    ["usage"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_database_url_pointing_at_nothing(command: list[str], tmp_path: Path):
    port = free_port()
    run = tiergate(
        *command, cwd=tmp_path, DATABASE_URL=f"postgresql://tg:s3cret@127.0.0.1:{port}/tg"
    )
    assert one_line(run) == (
        f"tiergate: cannot connect to the database at postgresql://tg:***@127.0.0.1:{port}/tg"
        " (DATABASE_URL): connection refused; is PostgreSQL running there? Start it or fix host"
        f" and port, {UNSET}"
    )
    assert list(tmp_path.iterdir()) == []  # no embedded database made instead


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://root:s3cret@db/tiergate",
            "DATABASE_URL is not a PostgreSQL URL: mysql://root:***@db/tiergate",
        ),
        ("notaurl", "DATABASE_URL is not a URL: 'notaurl'"),
    ],
    ids=["mysql", "notaurl"],
)
def test_database_url_that_is_not_postgresql(
    command: list[str], url: str, message: str, tmp_path: Path
):
    run = tiergate(*command, cwd=tmp_path, DATABASE_URL=url)
    assert one_line(run) == f"tiergate: {message}; {EXPECTED}, {UNSET}"


@pytest.fixture(scope="module")
def password_protected(home: Path) -> Iterator[DatabaseURL]:
    """The embedded server's database as user ``tg_pw``, who must give the password ``right``."""
    server = EmbeddedPostgres(home)
    admin = server.start(create=False)
    hba = server.pgdata / "pg_hba.conf"
    trusted = hba.read_text()
    with psycopg.connect(admin.libpq(), autocommit=True) as conn:
        conn.execute("CREATE ROLE tg_pw LOGIN PASSWORD 'right'")
        hba.write_text("local all tg_pw scram-sha-256\n" + trusted)
        conn.execute("SELECT pg_reload_conf()")
    yield admin.with_login("tg_pw", "wrong")
    hba.write_text(trusted)
    with psycopg.connect(admin.libpq(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("DROP ROLE tg_pw")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_database_url_with_a_wrong_password(
    command: list[str], password_protected: DatabaseURL, tmp_path: Path
):
    run = tiergate(*command, cwd=tmp_path, DATABASE_URL=password_protected.libpq())
    assert one_line(run) == (
        f"tiergate: cannot connect to the database at {password_protected.redacted()}"
        " (DATABASE_URL): the password was refused; check the user and password in"
        f" DATABASE_URL, {UNSET}"
    )
    assert "wrong" not in run.stderr


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["keys", "create", "--name", "x"], ["usage"], ["worker"], ["prune"]],
    ids=lambda c: " ".join(c[:2]),
)
def test_only_serve_and_migrate_create_a_database(command: list[str], tmp_path: Path):
    run = tiergate(*command, cwd=tmp_path)
    assert one_line(run) == (
        f"tiergate: no database: DATABASE_URL is unset and there is no embedded PostgreSQL in"
        f" {tmp_path}/.tiergate/pgdata; run this where `tiergate serve` runs, or set"
        " TIERGATE_HOME to its data folder (the one holding pgdata), or DATABASE_URL to its"
        " database"
    )
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_direct_url_without_database_url(command: list[str], tmp_path: Path):
    run = tiergate(*command, cwd=tmp_path, DATABASE_DIRECT_URL="postgresql://tg@127.0.0.1/tg")
    assert one_line(run) == (
        "tiergate: DATABASE_DIRECT_URL is set without DATABASE_URL: it is the session address"
        " of the database that DATABASE_URL reaches through a transaction-mode pooler; set"
        " both or neither"
    )
    assert list(tmp_path.iterdir()) == []  # no embedded database made instead


def test_a_direct_url_pointing_at_nothing_names_itself(database: DatabaseURL, tmp_path: Path):
    port = free_port()
    run = tiergate(
        "keys",
        "list",
        cwd=tmp_path,
        DATABASE_URL=database.libpq(),
        DATABASE_DIRECT_URL=f"postgresql://tg:s3cret@127.0.0.1:{port}/tg",
    )
    assert one_line(run) == (
        f"tiergate: cannot connect to the database at postgresql://tg:***@127.0.0.1:{port}/tg"
        " (DATABASE_DIRECT_URL): connection refused; is PostgreSQL running there? Start it or"
        f" fix host and port, {UNSET}"
    )


def test_serve_on_a_busy_port_fails_first(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = tiergate(
            "serve", "--port", str(port), cwd=tmp_path, TIERGATE_HOME=str(tmp_path / "h")
        )
    assert one_line(run) == (
        f"tiergate: cannot serve on 127.0.0.1:{port}: the port is in use; stop what listens"
        " there (another tiergate serve?) or pass --port"
    )
    assert not (tmp_path / "h").exists()  # the embedded database was never started


def test_batch_submit_of_a_missing_file(tmp_path: Path):
    run = tiergate("batch", "submit", "nope.jsonl", "--endpoint", "/v1/responses", cwd=tmp_path)
    assert one_line(run, code=2) == "tiergate: no such file: nope.jsonl"


def test_batch_list_without_a_gateway(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"
    run = tiergate("batch", "list", "--api-key", "sk-x", cwd=tmp_path, TIERGATE_URL=url)
    assert one_line(run) == (
        f"tiergate: cannot reach the gateway at {url} (connection refused); start it with"
        " `tiergate serve`, or point --url or TIERGATE_URL at it"
    )


def test_where_the_embedded_database_lives_is_logged_only_with_verbose(home: Path):
    quiet = tiergate("keys", "list", cwd=home.parent, TIERGATE_HOME=str(home))
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = tiergate("-v", "keys", "list", cwd=home.parent, TIERGATE_HOME=str(home))
    assert loud.returncode == 0
    assert f"embedded postgres: data in {home}/pgdata" in loud.stderr


def test_help_describes_tiergate(tmp_path: Path):
    shown = tiergate("--help", cwd=tmp_path)
    assert shown.returncode == 0
    assert "OpenAI-compatible gateway with a durable flex and batch tier" in " ".join(
        shown.stdout.split()
    )
    assert "only place" not in shown.stdout and "``" not in shown.stdout


def test_a_config_with_several_mistakes_reports_each_with_its_line(tmp_path: Path):
    from tests.unit.test_config_errors import MISTAKES

    config = tmp_path / "tiergate.yaml"
    config.write_text(MISTAKES)
    run = tiergate("serve", cwd=tmp_path, TIERGATE_CONFIG=str(config))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0] == "tiergate: bad configuration: 6 mistakes:"
    assert [line.split(": ")[0] for line in lines[1:]] == [
        f"  {config} line {n} ({where})"
        for n, where in [
            (3, "models[0].upstream"),
            (7, "models[1].deployments[0].upstream"),
            (8, "models[1].deployments[0].weight"),
            (11, "models[2].fallbacks[1]"),
            (14, "models[3].flex_concurrency"),
            (16, "limits.max_body_bytes"),
        ]
    ]
    assert list(tmp_path.iterdir()) == [config]  # nothing started, nothing created


def test_a_live_key_name_is_taken_until_revoked(home: Path):
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return tiergate("keys", *args, cwd=home.parent, TIERGATE_HOME=str(home))

    assert keys("create", "--name", "team-a").returncode == 0
    assert one_line(keys("create", "--name", "team-a")) == (
        "tiergate: a live key is already named 'team-a'; choose another --name, or revoke that"
        " key first (tiergate keys revoke team-a)"
    )
    assert keys("revoke", "team-a").returncode == 0
    again = keys("create", "--name", "team-a")
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1].startswith("tg-")
    listed = [line.split()[1:4:2] for line in keys("list").stdout.splitlines()]
    assert [state for name, state in listed if name == "team-a"] == ["revoked", "active"]


def test_db_status_and_stop(home: Path, tmp_path: Path):
    def db(action: str, where: Path = home) -> subprocess.CompletedProcess[str]:
        return tiergate("db", action, cwd=tmp_path, TIERGATE_HOME=str(where))

    assert tiergate("keys", "list", cwd=tmp_path, TIERGATE_HOME=str(home)).returncode == 0
    running = db("status")
    pgdata = home / "pgdata"
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    assert running.returncode == 0 and running.stdout.startswith(
        f"embedded postgres: running (pid {pid}, data in {pgdata}, url postgresql://postgres@/"
        "tiergate?host="
    )
    stopped = db("stop")
    assert (stopped.returncode, stopped.stdout) == (
        0,
        f"embedded postgres: stopped (pid {pid}, data in {pgdata})\n",
    )
    assert (db("status").returncode, db("status").stdout) == (
        3,
        f"embedded postgres: not running (data in {pgdata})\n",
    )
    assert db("stop").stdout == f"embedded postgres: not running (data in {pgdata})\n"
    # Any command starts an existing server again.
    assert tiergate("keys", "list", cwd=tmp_path, TIERGATE_HOME=str(home)).returncode == 0
    assert db("status").returncode == 0
    assert one_line(db("status", tmp_path / "elsewhere")) == (
        f"tiergate: no embedded PostgreSQL in {tmp_path}/elsewhere/pgdata; `tiergate serve` or"
        " `tiergate migrate` creates one there (set TIERGATE_HOME to look elsewhere)"
    )
    assert not (tmp_path / "elsewhere").exists()

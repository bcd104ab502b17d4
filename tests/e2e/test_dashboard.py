"""The admin dashboard in headless Chromium (Debian's chromium + chromium-driver, Selenium).

Signs in with an admin key, watches a running batch's progress bar reach completed, finds a
request by custom_id, checks that other keys see no data, that client values are escaped,
that no route writes, and that the overview and usage pages show what the SQL views say.
Screenshots of every page (1280x800 and 390x844) land in the test's tmp dir; set
``TIERGATE_DASHBOARD_SCREENSHOTS=docs/dashboard`` to copy them there too.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from app.store.dburl import DatabaseURL
from app.testing.config import write_config
from app.testing.processes import Gateway, base_env, create_key
from tests.support.admin import dashboard_session
from tests.support.batches import chat_line, jsonl, upload

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDE = (1280, 800)
NARROW = (390, 844)
EVIL = "<script>alert('x')</script>"
TIMEOUT_S = 60


# A deployment whose deferred rows run in jobs of the mock provider's Batch API.
BULK = {
    "name": "bulk",
    "deployments": [
        {
            "name": "provider",
            "executor": "batch",
            "batch": {
                "turnaround_s": 20,
                "margin_s": 5,
                "gather_s": 0.5,
                "poll_min_s": 0.2,
                "poll_max_s": 0.5,
            },
        }
    ],
}


@pytest.fixture(scope="module")
def gateway_config(
    gateway_config: Path, tmp_path_factory: pytest.TempPathFactory, mock_upstream: str
) -> Path:
    """The shared config, with heartbeats and queue counts often enough to watch live, and
    a model whose deployment uses the provider's Batch API."""
    data = yaml.safe_load(gateway_config.read_text())
    limits = {**data["limits"], "heartbeat_s": 0.5, "metrics_max_age_s": 1}
    path = tmp_path_factory.mktemp("config") / "tiergate.yaml"
    bulk = {**BULK, "deployments": [{**BULK["deployments"][0], "upstream": f"{mock_upstream}/v1"}]}
    return write_config(path, [*data["models"], bulk], limits)


@pytest.fixture(scope="module")
def admin_key(database: DatabaseURL) -> str:
    return create_key(database.libpq(), "root-admin", admin=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("screenshots")
    yield directory
    target = os.environ.get("TIERGATE_DASHBOARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in directory.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download drivers
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDE[0]},{WIDE[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def signed_in(browser: WebDriver, gateway: Gateway, admin_key: str) -> WebDriver:
    sign_in(browser, gateway, admin_key)
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.find_elements(By.ID, "queue-depth"))
    return browser


def sign_in(browser: WebDriver, gateway: Gateway, key: str) -> None:
    browser.delete_all_cookies()
    browser.get(gateway.url + "/dashboard")
    assert browser.current_url.endswith("/dashboard/sign-in")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, ".sign-in button").click()


def screenshot(browser: WebDriver, shots: Path, name: str) -> None:
    """The page at both sizes, with its whole height (the window grows to fit)."""
    for label, (width, height) in (("wide", WIDE), ("narrow", NARROW)):
        browser.set_window_size(width, height)
        full = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, max(height, min(int(full) + 140, 2400)))
        browser.save_screenshot(str(shots / f"{name}-{label}.png"))
    browser.set_window_size(*WIDE)


def fact(browser: WebDriver, label: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, f'dd[data-field="{label}"]').text)


def duration_s(shown: str) -> int:
    """``1m 5s`` -> 65."""
    minutes = re.search(r"(\d+)m", shown)
    seconds = re.search(r"(\d+)s", shown)
    return (int(minutes[1]) * 60 if minutes else 0) + (int(seconds[1]) if seconds else 0)


def no_alert(browser: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_without_a_session_there_is_no_data(gateway: Gateway, key: str):
    with httpx.Client(base_url=gateway.url, follow_redirects=False) as http:
        for path in (
            "/dashboard",
            "/dashboard/keys",
            "/dashboard/usage",
            "/dashboard/batches",
            "/dashboard/jobs",
        ):
            answer = http.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/sign-in"
        for path in ("/dashboard/api/overview", "/dashboard/api/batches/batch_x"):
            assert http.get(path).status_code == 401
            # A bearer key (even a valid one) is no session.
            assert http.get(path, headers={"authorization": f"Bearer {key}"}).status_code == 401
        page = http.get("/dashboard/sign-in")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_a_non_admin_key_gets_the_sign_in_page(
    browser: WebDriver, gateway: Gateway, key: str, shots: Path
):
    sign_in(browser, gateway, key)
    error = WebDriverWait(browser, TIMEOUT_S).until(
        lambda d: d.find_element(By.CLASS_NAME, "error")
    )
    assert "not an admin key" in error.text
    assert browser.get_cookie("tiergate_session") is None
    assert (
        not browser.find_elements(By.TAG_NAME, "nav")
        or not browser.find_element(By.TAG_NAME, "nav").text.strip()
    )
    screenshot(browser, shots, "sign-in")
    browser.get(gateway.url + "/dashboard/keys")
    assert browser.current_url.endswith("/dashboard/sign-in")
    assert "alice" not in browser.page_source


def test_sign_in_is_csrf_proof(gateway: Gateway, admin_key: str):
    with httpx.Client(base_url=gateway.url, follow_redirects=False) as http:
        http.get("/dashboard/sign-in")
        token = http.cookies["tiergate_csrf"]
        # Another site posting the form: wrong Origin, or no token of the browser's.
        forged = http.post(
            "/dashboard/sign-in",
            data={"key": admin_key, "csrf": token},
            headers={"origin": "https://evil.example"},
        )
        assert forged.status_code == 403 and "tiergate_session" not in forged.cookies
        stranger = httpx.post(
            gateway.url + "/dashboard/sign-in",
            data={"key": admin_key, "csrf": "guessed"},
            headers={"origin": gateway.url},
        )
        assert stranger.status_code == 403 and "tiergate_session" not in stranger.cookies
        good = http.post(
            "/dashboard/sign-in",
            data={"key": admin_key, "csrf": token},
            headers={"origin": gateway.url},
        )
        assert good.status_code == 303 and good.headers["location"] == "/dashboard"
        cookie = next(c for c in http.cookies.jar if c.name == "tiergate_session")
        assert cookie.value != admin_key and admin_key not in cookie.value
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert http.get("/dashboard/api/overview").status_code == 200
        # Sign-out: the session is gone from the server, not only from the browser.
        http.post("/dashboard/sign-out", data={"csrf": token}, headers={"origin": gateway.url})
        replay = httpx.get(
            gateway.url + "/dashboard/api/overview", cookies={"tiergate_session": cookie.value}
        )
        assert replay.status_code == 401


def test_revoking_the_key_ends_its_sessions(gateway: Gateway, database: DatabaseURL):
    secret = create_key(database.libpq(), "short-lived-admin", admin=True)
    with dashboard_session(gateway.url, secret) as http:
        assert http.get("/dashboard/api/overview").status_code == 200
        subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "revoke", "short-lived-admin"],
            env=base_env(DATABASE_URL=database.libpq()),
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert http.get("/dashboard/api/overview").status_code == 401
        assert http.get("/dashboard/keys").status_code == 303


def test_no_route_writes(gateway: Gateway):
    paths = [
        "/dashboard",
        "/dashboard/batches",
        "/dashboard/batches/batch_x",
        "/dashboard/requests",
        "/dashboard/requests/resp_x",
        "/dashboard/jobs",
        "/dashboard/usage",
        "/dashboard/keys",
        "/dashboard/files/file_x",
        "/dashboard/static/dashboard.js",
        "/dashboard/api/overview",
        "/dashboard/api/batches/batch_x",
    ]
    with httpx.Client(base_url=gateway.url, follow_redirects=False) as http:
        for path in paths:
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                assert http.request(method, path).status_code == 405, (method, path)
        for path in ("/dashboard/sign-in", "/dashboard/sign-out"):
            for method in ("PUT", "PATCH", "DELETE"):
                assert http.request(method, path).status_code == 405, (method, path)
        assert http.get("/dashboard/sign-out").status_code == 405


def test_batch_progress_advances_to_completed(
    signed_in: WebDriver,
    gateway: Gateway,
    client: openai.OpenAI,
    db: psycopg.Connection,
    shots: Path,
):
    browser = signed_in
    # 20 lines of 0.8 s, at most 4 at once: at least 4 s to watch, polled every 1.5 s.
    lines = [chat_line(f"slow-{i}", "mock:sleep_ms=800", model="slow-batch") for i in range(20)]
    lines.append(chat_line("bad-1", "mock:status=400", model="slow-batch"))
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"note": EVIL},
    )
    browser.get(f"{gateway.url}/dashboard/batches/{batch.id}")
    seen: list[float] = []

    def value(driver: WebDriver) -> float:
        done = float(driver.find_element(By.CSS_SELECTOR, "progress.bar").get_attribute("value"))
        if not seen or done != seen[-1]:
            seen.append(done)
        return done

    # The page reloads itself when the batch ends: an element read meanwhile may be gone,
    # stale, or (in ChromeDriver) an "unhandled inspector error"; the next poll reads again.
    wait = WebDriverWait(
        browser, TIMEOUT_S, poll_frequency=0.1, ignored_exceptions=[WebDriverException]
    )
    wait.until(lambda d: 0 < value(d) < 21)
    screenshot(browser, shots, "batch-running")

    def completed(driver: WebDriver) -> bool:
        value(driver)
        status = driver.find_element(By.CSS_SELECTOR, 'dd[data-field="Status"]').text
        return status == "completed" and bool(driver.find_elements(By.LINK_TEXT, "output file"))

    wait.until(completed)  # the page reloads itself once the batch ended: files are listed
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen  # it moved, live, forwards
    assert seen[-1] == 21
    assert browser.find_element(By.CSS_SELECTOR, ".pct").text == "100%"
    # The page's numbers are the view's.
    columns = ("total", "pending", "in_progress", "completed", "failed", "total_tokens")
    view = db.execute(
        f"SELECT {', '.join(columns)} FROM tiergate_batch_progress WHERE batch_id = %s",
        (batch.id,),
    ).fetchone()
    shown = [
        browser.find_element(By.CSS_SELECTOR, f'dd[data-field="{label}"]').text
        for label in ("Total", "Pending", "In progress", "Completed", "Failed", "Total tokens")
    ]
    assert view is not None and shown == [f"{n:,}" for n in view]
    assert view[3:5] == (20, 1)
    # When it ended and how long it took, as the batches row says.
    ended, took = db.execute(
        "SELECT completed_at, extract(epoch FROM completed_at - created_at)::int"
        " FROM batches WHERE id = %s",
        (batch.id,),
    ).fetchone()
    assert fact(browser, "Finished") == f"{ended.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
    assert re.fullmatch(r"(\d+m )?\d+s", fact(browser, "Duration")), fact(browser, "Duration")
    assert abs(duration_s(fact(browser, "Duration")) - took) <= 1
    facts = browser.find_element(By.CSS_SELECTOR, ".facts").text
    assert EVIL in facts  # metadata shown as text
    no_alert(browser)
    errors = browser.find_elements(By.CSS_SELECTOR, ".card table tbody tr")
    assert any("upstream_400" in row.text or "400" in row.text for row in errors), [
        e.text for e in errors
    ]
    screenshot(browser, shots, "batch")
    # Its files download through the dashboard (the admin session, no bearer key).
    link = browser.find_element(By.LINK_TEXT, "output file")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    body = httpx.get(str(link.get_attribute("href")), cookies=cookies).text
    assert body.count("\n") == 20 and "slow-3" in body
    assert httpx.get(str(link.get_attribute("href"))).status_code == 303  # no session
    browser.get(f"{gateway.url}/dashboard/batches?status=completed")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.batches tbody tr")
    assert any(batch.id in row.text and "100%" in row.text for row in rows)
    screenshot(browser, shots, "batches")


def test_find_a_request_by_custom_id(
    signed_in: WebDriver, gateway: Gateway, client: openai.OpenAI, shots: Path
):
    browser = signed_in
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(EVIL, "hello there", model="remote")])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    browser.get(f"{gateway.url}/dashboard/batches/{batch.id}")
    WebDriverWait(browser, TIMEOUT_S, ignored_exceptions=[WebDriverException]).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, 'dd[data-field="Status"]').text == "completed"
            and d.find_elements(By.LINK_TEXT, "output file")  # reloaded once it ended
        )
    )
    # A finished batch without a failed line says so (not "nothing yet").
    assert _cells(browser, ".card table") == []
    assert browser.find_element(By.CSS_SELECTOR, ".card td.empty").text == "no errors"
    assert "nothing yet" not in browser.page_source
    # A search that finds nothing says so.
    browser.get(gateway.url + "/dashboard/requests?q=no-such-custom-id")
    empty = browser.find_element(By.CSS_SELECTOR, "table.requests td.empty")
    assert empty.text == "no request matches"
    screenshot(browser, shots, "requests-none")
    browser.get(gateway.url + "/dashboard/requests")
    browser.find_element(By.NAME, "q").send_keys(EVIL)
    browser.find_element(By.CSS_SELECTOR, ".filters button").click()
    rows = WebDriverWait(browser, TIMEOUT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "table.requests tbody tr a")
    )
    no_alert(browser)
    row = browser.find_element(By.CSS_SELECTOR, "table.requests tbody tr")
    assert EVIL in row.text and batch.id in row.text
    # A batch line is a "batch" line, as `tiergate batch` and `tiergate usage` say.
    assert browser.find_element(By.CSS_SELECTOR, 'td[data-label="Tier"]').text == "batch"
    screenshot(browser, shots, "requests")
    rows[0].click()
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.find_elements(By.CLASS_NAME, "timeline"))
    assert fact(browser, "Tier") == "batch"
    assert fact(browser, "Executor") == "direct"  # the path its attempt ran on
    assert not browser.find_elements(By.CSS_SELECTOR, 'dd[data-field="Provider job"]')
    timeline = browser.find_element(By.CLASS_NAME, "timeline").text
    for step in ("created", "queued", "started", "attempts: 1", "finished: completed"):
        assert step in timeline, timeline
    assert "hello there" not in browser.page_source  # bodies only on demand
    browser.find_element(By.LINK_TEXT, "Show bodies").click()
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: "hello there" in d.page_source)
    no_alert(browser)
    screenshot(browser, shots, "request")


def test_the_timeline_shows_each_attempt_with_its_error(
    signed_in: WebDriver, gateway: Gateway, client: openai.OpenAI
):
    # The provider fails the first attempt (a retryable 503), the retry answers.
    answer = client.responses.create(
        model="remote", input="mock:status=503,fail_times=1,key=dash-retry hi", service_tier="flex"
    )
    assert answer.status == "completed"
    browser = signed_in
    browser.get(f"{gateway.url}/dashboard/requests/{answer.id}")
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.find_elements(By.CLASS_NAME, "timeline"))
    assert fact(browser, "Tier") == "flex"  # a flex call stays flex
    timeline = browser.find_element(By.CLASS_NAME, "timeline").text
    assert "attempt 1 failed" in timeline and "upstream_503" in timeline, timeline
    assert "attempts: 2" in timeline and "finished: completed" in timeline, timeline


def test_provider_jobs_and_the_path_a_request_ran_on(
    signed_in: WebDriver,
    gateway: Gateway,
    client: openai.OpenAI,
    db: psycopg.Connection,
    shots: Path,
):
    browser = signed_in
    browser.get(gateway.url + "/dashboard/jobs")
    before = _cells(browser, "table.ended-jobs")
    assert browser.find_element(By.CSS_SELECTOR, "table.ended-jobs td.empty").text == (
        "no provider job has ended"
    )
    assert "bulk/provider" in browser.find_element(By.CSS_SELECTOR, "main > .meta").text
    assert before == []
    # A blocking flex call to a batch deployment runs in a job of the provider's Batch API.
    answer = client.responses.create(model="bulk", input="through a job", service_tier="flex")
    assert answer.status == "completed"
    job = db.execute(
        "SELECT j.id, j.upstream_batch_id, j.status, j.upstream_status, j.rows"
        " FROM requests r JOIN upstream_jobs j ON j.id = r.upstream_job_id WHERE r.id = %s",
        (answer.id,),
    ).fetchone()
    assert job is not None and job[2] == "ended"
    browser.get(f"{gateway.url}/dashboard/requests/{answer.id}")
    assert fact(browser, "Executor") == "batch" and fact(browser, "Tier") == "flex"
    assert fact(browser, "Provider job") == job[0]
    assert fact(browser, "Provider batch") == job[1]
    assert (fact(browser, "Job status"), fact(browser, "Provider status")) == (job[2], job[3])
    browser.find_element(By.LINK_TEXT, job[0]).click()
    WebDriverWait(browser, TIMEOUT_S).until(
        lambda d: d.current_url.endswith("/dashboard/jobs#" + job[0])
    )
    (ended,) = _cells(browser, "table.ended-jobs")
    assert ended[:7] == [job[0], "bulk", "provider", "openai", job[1], job[3], "1"], ended
    assert ended[7] == "completed 1"
    assert browser.find_element(By.CSS_SELECTOR, "table.open-jobs td.empty").text == (
        "no open provider job"
    )
    assert "Jobs 1 to 1, newest first." in browser.page_source
    assert not browser.find_elements(By.LINK_TEXT, "older →")
    screenshot(browser, shots, "jobs")


def _cells(browser: WebDriver, selector: str) -> list[list[str]]:
    """A table's cells, read at once (the live tables are replaced while a test reads)."""
    rows: list[list[str]] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
        ".filter(tr => !tr.querySelector('td.empty'))"
        ".map(tr => [...tr.children].map(td => td.innerText.trim()))",
        selector,
    )
    return rows


def _number(cell: str) -> Decimal:
    return Decimal(0) if cell == "—" else Decimal(cell.replace(",", ""))


def test_overview_numbers_are_the_views(
    signed_in: WebDriver,
    gateway: Gateway,
    client: openai.OpenAI,
    mock_upstream: str,
    db: psycopg.Connection,
    shots: Path,
):
    browser = signed_in
    # A process that stopped beating five minutes ago (killed: it never unregistered).
    db.execute(
        "INSERT INTO processes (id, kind, hostname, pid, started_at, last_seen_at)"
        " VALUES ('wk_gone', 'worker', 'old-host', 4242, now() - interval '1 hour',"
        " now() - interval '5 minutes')"
    )
    browser.get(gateway.url + "/dashboard")
    # A realtime stream the mock holds open: one call in flight, one live row in the queue.
    held = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "mock:hold=dash"}], stream=True
    )
    try:
        next(iter(held))

        def agree(driver: WebDriver) -> bool:
            rate = driver.find_element(By.ID, "error-rate")
            shown = (rate.get_attribute("data-requests"), rate.get_attribute("data-errors"))
            depth = sorted(tuple(row) for row in _cells(driver, "#queue-depth"))
            flights = {(r[0], r[1]): r[5] for r in _cells(driver, "#in-flight")}
            executors = {(r[0], r[1]): r[2] for r in _cells(driver, "#in-flight")}
            engines = {(r[0], r[1]): r[3] for r in _cells(driver, "#in-flight")}
            requests, errors = db.execute(
                "SELECT coalesce(sum(requests), 0), coalesce(sum(errors), 0)"
                " FROM tiergate_requests_per_minute"
                " WHERE minute >= date_trunc('minute', now()) - interval '14 minutes'"
            ).fetchone()
            tiers = db.execute(
                "SELECT price_tier, sum(requests)::text, sum(errors)::text"
                " FROM tiergate_requests_per_minute"
                " WHERE minute >= date_trunc('minute', now()) - interval '14 minutes'"
                " GROUP BY 1 ORDER BY 1"
            ).fetchall()
            by_tier = [tuple(row) for row in _cells(driver, "#by-tier")]
            stored: dict[tuple[str, str], dict[str, int]] = {}
            for model, tier, status, n in db.execute(
                "SELECT model, service_tier, status, requests FROM queue_depth"
            ):
                stored.setdefault((model, tier), {})[status] = n
            expected = sorted(
                (m, t, f"{s.get('pending', 0):,}", f"{s.get('in_progress', 0):,}")
                for (m, t), s in stored.items()
            )
            return (
                shown == (str(requests), str(errors))
                and by_tier == [tuple(row) for row in tiers]
                and depth == expected
                and ("remote", "default", "0", "1") in depth
                and flights.get(("remote", "default")) == "1"
                and executors.get(("remote", "default")) == "direct"
                and executors.get(("bulk", "provider")) == "batch openai → flex"
                and engines.get(("remote", "default")) == "-"
            )

        WebDriverWait(browser, TIMEOUT_S, poll_frequency=0.5).until(agree)

        def processes(driver: WebDriver) -> bool:
            rows = _cells(driver, "#processes")
            live = {r[0] for r in rows if r[1] == socket.gethostname() and r[6] == "live"}
            gone = [r for r in rows if r[1] == "old-host"]
            return (
                live == {"gateway", "worker"}
                and len(gone) == 1
                and gone[0][0] == "worker"
                and gone[0][6].startswith("stale: silent for 5m")
                and any(r[0] == "gateway" and r[5] == "1" for r in rows)  # the held stream
            )

        WebDriverWait(browser, TIMEOUT_S, poll_frequency=0.5).until(processes)
        stale = browser.find_elements(By.CSS_SELECTOR, "#processes tr.stale")
        assert len(stale) == 1 and "old-host" in stale[0].text
        summary = browser.find_element(By.ID, "process-summary").text
        assert "1 gateway(s) and 1 worker(s) live; 1 stale" in summary, summary
        # Batch lines are "batch" in the chart and the table (never "flex" for them).
        legend = browser.find_element(By.ID, "rpm-legend").text.split()
        assert "batch" in legend and "flex" in legend, legend
        screenshot(browser, shots, "overview")
    finally:
        httpx.post(f"{mock_upstream}/_mock/release/dash")
        held.close()
        db.execute("DELETE FROM processes WHERE id = 'wk_gone'")
    rate = browser.find_element(By.ID, "error-rate")
    assert int(rate.get_attribute("data-requests") or 0) >= 22  # the batches above
    assert int(rate.get_attribute("data-errors") or 0) >= 1
    # Live: the page refreshes without reloading, and the call leaves the flight table.
    WebDriverWait(browser, TIMEOUT_S).until(
        lambda d: (
            {(r[0], r[1]): r[5] for r in _cells(d, "#in-flight")}[("remote", "default")] == "0"
        )
    )
    # Nothing of another origin was loaded.
    entries = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert entries and all(name.startswith(gateway.url) for name in entries), entries


def test_usage_page_is_the_view(
    signed_in: WebDriver, gateway: Gateway, db: psycopg.Connection, shots: Path
):
    browser = signed_in
    browser.get(gateway.url + "/dashboard/usage")
    shown = {
        (day, key, model, tier): (_number(n), _number(total), _number(cost))
        for day, key, model, tier, n, _i, _c, _o, _r, total, cost in _cells(browser, "table.usage")
    }
    expected = {
        (f"{day:%Y-%m-%d}", key, model, tier): (
            Decimal(n),
            Decimal(total or 0),
            Decimal(cost or 0),
        )
        for day, key, model, tier, n, total, cost in db.execute(
            "SELECT date_trunc('day', hour), key_name, model, price_tier, sum(requests),"
            " sum(total_tokens), sum(cost_usd) FROM tiergate_usage_by_key"
            " WHERE hour >= date_trunc('day', now()) - interval '13 days' GROUP BY 1, 2, 3, 4"
        )
    }
    assert shown == expected and len(shown) >= 2
    assert {"batch", "flex", "default"} <= {tier for _d, _k, _m, tier in shown}
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    by_tier = next(
        card
        for card in browser.find_elements(By.CSS_SELECTOR, ".card")
        if card.find_element(By.TAG_NAME, "h2").text.endswith("by tier")
    )
    assert {"batch", "flex", "default"} <= set(
        by_tier.find_element(By.CLASS_NAME, "legend").text.split()
    )
    screenshot(browser, shots, "usage")


def test_keys_page_shows_no_secret(
    signed_in: WebDriver,
    gateway: Gateway,
    admin_key: str,
    key: str,
    shots: Path,
    database: DatabaseURL,
):
    options = ["--rpm", "600", "--tpm", "200000", "--budget-usd", "50", "--weight", "2"]
    limited = create_key(database.libpq(), "limited", options=options)
    browser = signed_in
    browser.get(gateway.url + "/dashboard/keys")
    rows = _cells(browser, "table.keys")
    names = {row[0] for row in rows}
    assert {"alice", "root-admin", "limited"} <= names
    alice = next(row for row in rows if row[0] == "alice")
    assert alice[1] == key[:7] + "…" and alice[3] == "none" and alice[6] != "—"  # last used
    limits = next(row for row in rows if row[0] == "limited")[3]
    assert limits == "rpm 600, tpm 200,000, $0.00 of $50.00/month, weight 2"
    assert limited not in browser.page_source
    assert admin_key not in browser.page_source and key not in browser.page_source
    # At 1280 px the whole table shows: no horizontal scrolling, Revoked inside the window.
    browser.set_window_size(*WIDE)
    fits = browser.execute_script(
        "const box = document.querySelector('table.keys').parentElement;"
        "const th = [...document.querySelectorAll('table.keys th')].pop();"
        "return [box.scrollWidth <= box.clientWidth, th.textContent,"
        " th.getBoundingClientRect().right <= window.innerWidth]"
    )
    assert fits == [True, "Revoked", True], fits
    revoked = next(row for row in rows if row[0] == "short-lived-admin")[7]
    assert revoked.startswith(time.strftime("%Y-", time.gmtime())), revoked
    screenshot(browser, shots, "keys")


def test_a_batch_that_failed_validation_lists_its_reasons_paged(
    signed_in: WebDriver, gateway: Gateway, client: openai.OpenAI, shots: Path
):
    """What `tiergate batch` prints (line, code, message), 50 at a time."""
    lines = [b"{broken %d\n" % i for i in range(70)]
    batch = client.batches.create(
        input_file_id=upload(client, b"".join(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while client.batches.retrieve(batch.id).status != "failed":
        assert time.monotonic() < deadline, "the batch never failed validation"
        time.sleep(0.2)
    browser = signed_in
    browser.get(f"{gateway.url}/dashboard/batches/{batch.id}")
    rows = _cells(browser, "table.validation")
    assert len(rows) == 50
    assert rows[0][0] == "1" and rows[0][1] == "invalid_json_line", rows[0]
    assert rows[0][2].startswith("This line is not valid"), rows[0]
    assert [int(r[0]) for r in rows] == list(range(1, 51))
    meta = browser.find_element(By.CSS_SELECTOR, ".validation .meta").text
    assert "Errors 1 to 50 of 70" in meta, meta
    assert fact(browser, "Status") == "failed" and fact(browser, "Finished") != "—"
    assert fact(browser, "Duration") != "—"
    assert browser.find_element(By.CSS_SELECTOR, ".cards td.empty").text == "no line ran"
    assert "nothing yet" not in browser.page_source
    screenshot(browser, shots, "batch-invalid")
    browser.find_element(By.LINK_TEXT, "next →").click()
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: "errors=50" in d.current_url)
    rows = _cells(browser, "table.validation")
    assert [int(r[0]) for r in rows] == list(range(51, 71))
    assert not browser.find_elements(By.LINK_TEXT, "next →")
    browser.find_element(By.LINK_TEXT, "← previous").click()
    WebDriverWait(browser, TIMEOUT_S).until(lambda d: "errors=0" in d.current_url)
    assert len(_cells(browser, "table.validation")) == 50

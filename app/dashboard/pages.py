"""The dashboard's pages as HTML (server-rendered; dashboard.js adds the live parts)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import RowMapping

from app.dashboard.html import Markup, join, link, render, table, text
from app.dashboard.session import CSRF_FIELD
from app.vocabulary import FINAL, FINAL_BATCH, BatchStatus, DeliveryStatus

NAV = (
    ("overview", "Overview", "/dashboard"),
    ("batches", "Batches", "/dashboard/batches"),
    ("jobs", "Provider jobs", "/dashboard/jobs"),
    ("requests", "Requests", "/dashboard/requests"),
    ("usage", "Usage", "/dashboard/usage"),
    ("keys", "Keys", "/dashboard/keys"),
)

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tiergate</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script>
</head><body data-page="{page}">
<header><a class="brand" href="/dashboard">tiergate</a><nav>{nav}</nav>{account}</header>
<main><h1>{title}</h1>{body}</main>
</body></html>"""

SIGN_OUT = """<form class="account" method="post" action="/dashboard/sign-out">
<input type="hidden" name="{field}" value="{csrf}"><span>{name}</span>
<button type="submit">Sign out</button></form>"""


def layout(page: str, title: str, body: Markup, *, admin: str | None, csrf: str) -> str:
    nav = join(
        render(
            '<a href="{href}"{current}>{label}</a>',
            href=href,
            label=label,
            current=Markup(' aria-current="page"' if name == page else ""),
        )
        for name, label, href in NAV
    )
    account = (
        render(SIGN_OUT, field=CSRF_FIELD, csrf=csrf, name=admin)
        if admin is not None
        else Markup("")
    )
    return render(
        LAYOUT,
        title=title,
        page=page,
        nav=nav if admin is not None else Markup(""),
        account=account,
        body=body,
    )


def sign_in(csrf: str, error: str | None) -> Markup:
    message = render('<p class="error" role="alert">{e}</p>', e=error) if error else Markup("")
    return render(
        """{message}<form class="sign-in" method="post" action="/dashboard/sign-in">
<input type="hidden" name="{field}" value="{csrf}">
<label for="key">Admin API key</label>
<input id="key" name="key" type="password" autocomplete="off" required
 placeholder="tg-..." autofocus>
<button type="submit">Sign in</button>
<p class="hint">Only keys created with <code>tiergate keys create --admin</code> may sign in.
The key is checked once; the browser keeps a session cookie, never the key.</p></form>""",
        message=message,
        field=CSRF_FIELD,
        csrf=csrf,
    )


def overview() -> Markup:
    """Filled in and refreshed by dashboard.js from /dashboard/api/overview."""
    return Markup(
        """<p class="meta">Live: refreshed every few seconds. <span id="updated"></span></p>
<section class="cards">
<div class="card"><h2>Requests per minute</h2><div id="rpm-chart" class="chart"></div>
<div id="rpm-legend" class="legend"></div></div>
<div class="card"><h2>Error rate</h2><p class="big" id="error-rate">—</p>
<p class="meta" id="error-detail"></p><div class="scroll"><table id="by-tier">
<thead><tr><th>Tier</th><th>Finished</th><th>Not completed</th></tr></thead>
<tbody></tbody></table></div></div>
</section>
<section class="cards">
<div class="card"><h2>Queue depth</h2><div class="scroll"><table id="queue-depth">
<thead><tr><th>Model</th><th>Tier</th><th>Pending</th><th>In progress</th></tr></thead>
<tbody></tbody></table></div><p class="meta" id="queue-age"></p></div>
<div class="card"><h2>In flight per deployment</h2><div class="scroll">
<table id="in-flight"><thead><tr><th>Model</th><th>Deployment</th><th>Executor</th><th>Engine</th>
<th>State</th><th>In flight</th></tr></thead><tbody></tbody></table></div></div>
</section>
<section class="card processes"><h2>Processes</h2>
<p class="meta" id="process-summary"></p><div class="scroll"><table id="processes" class="stack">
<thead><tr><th>Role</th><th>Host</th><th>Pid</th><th>Started</th><th>Last beat</th>
<th>In flight</th><th>State</th></tr></thead><tbody></tbody></table></div></section>"""
    )


def _percent(p: RowMapping) -> int:
    total = p["total"] or 0
    done = (p["completed"] or 0) + (p["failed"] or 0)
    return round(100 * done / total) if total else 0


def progress_bar(p: RowMapping) -> Markup:
    done = (p["completed"] or 0) + (p["failed"] or 0)
    return render(
        '<progress class="bar" max="{total}" value="{done}" data-batch="{id}"></progress>'
        ' <span class="pct">{pct}%</span>',
        total=max(p["total"] or 0, 1),
        done=done,
        id=p["batch_id"],
        pct=_percent(p),
    )


def status(value: Any) -> Markup:
    return render('<span class="status s-{v}">{v}</span>', v=value)


def batches(
    rows: Sequence[RowMapping],
    keys: Sequence[RowMapping],
    key_id: str | None,
    chosen: str | None,
) -> Markup:
    key_options = join(
        render(
            '<option value="{id}"{sel}>{name}</option>',
            id=k["id"],
            name=k["name"],
            sel=Markup(" selected" if k["id"] == key_id else ""),
        )
        for k in keys
    )
    status_options = join(
        render(
            '<option value="{s}"{sel}>{s}</option>',
            s=s,
            sel=Markup(" selected" if s == chosen else ""),
        )
        for s in BatchStatus
    )
    form = render(
        """<form class="filters" method="get" action="/dashboard/batches">
<label>Key <select name="key"><option value="">any</option>{keys}</select></label>
<label>Status <select name="status"><option value="">any</option>{statuses}</select></label>
<button type="submit">Filter</button></form>""",
        keys=key_options,
        statuses=status_options,
    )
    listing = table(
        ("Batch", "Key", "Status", "Progress", "Done / total", "Failed", "Created"),
        (
            (
                link(f"/dashboard/batches/{quote(p['batch_id'])}", p["batch_id"]),
                p["key_name"],
                status(p["batch_status"]),
                progress_bar(p),
                f"{text(p['completed'])} / {text(p['total'])}",
                p["failed"],
                p["created_at"],
            )
            for p in rows
        ),
        empty="no batch matches" if key_id or chosen else "no batches",
        cls="batches stack",
    )
    return join((form, listing))


def _eta(p: RowMapping) -> str:
    left = (p["pending"] or 0) + (p["in_progress"] or 0)
    rate = p["finished_per_second"]
    if not left:
        return "—"
    if not rate:
        return "unknown"
    return duration(int(left / float(rate)))


def duration(seconds: int) -> str:
    """``2h 5m``, ``5m 3s``, ``3s``."""
    hours, minutes, secs = seconds // 3600, seconds % 3600 // 60, seconds % 60
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def batch(
    p: RowMapping,
    row: RowMapping,
    errors: Sequence[RowMapping],
    invalid: Sequence[RowMapping] = (),
    *,
    offset: int = 0,
    page_size: int = 50,
    deliveries: Sequence[RowMapping] = (),
) -> Markup:
    """A batch: its facts, errors by code, files, its webhook deliveries; a batch that failed
    validation lists the reasons (line, code, message), ``page_size`` at a time from
    ``offset``."""
    files = [
        (label, row[name])
        for label, name in (
            ("input", "input_file_id"),
            ("output", "output_file_id"),
            ("errors", "error_file_id"),
        )
        if row[name]
    ]
    downloads = join(
        render(
            '<li><a href="/dashboard/files/{id}" download>{label} file</a> <code>{id}</code></li>',
            id=file_id,
            label=label,
        )
        for label, file_id in files
    )
    facts = _facts(
        (
            ("Status", status(p["batch_status"])),
            ("Key", p["key_name"]),
            ("Endpoint", p["endpoint"]),
            ("Window", row["completion_window"]),
            ("Total", p["total"]),
            ("Pending", p["pending"]),
            ("In progress", p["in_progress"]),
            ("Completed", p["completed"]),
            ("Failed", p["failed"]),
            ("Finished per second", p["finished_per_second"]),
            ("ETA", _eta(p)),
            ("Total tokens", p["total_tokens"]),
            ("Cost (USD)", p["cost_usd"]),
            ("Created", p["created_at"]),
            ("Finished", row["ended_at"]),
            ("Duration", _took(p["created_at"], row["ended_at"])),
            ("Expires", p["expires_at"]),
            ("Metadata", json.dumps(row["metadata"]) if row["metadata"] else None),
        ),
        live=True,
    )
    final = p["batch_status"] in FINAL_BATCH
    return render(
        """<p class="meta"><code>{id}</code></p>
<div class="progress">{bar}</div>{facts}{invalid}
<section class="cards"><div class="card"><h2>Errors by code</h2>{errors}</div>
<div class="card"><h2>Files</h2><ul class="files">{downloads}</ul></div></section>{hooks}""",
        id=p["batch_id"],
        bar=progress_bar(p),
        facts=facts,
        invalid=_validation(p["batch_id"], row["validation_errors"], invalid, offset, page_size),
        errors=table(
            ("Code", "Requests"),
            ((e["code"], e["requests"]) for e in errors),
            empty="no line ran"
            if row["validation_errors"]
            else ("no errors" if final else "no errors yet"),
        ),
        downloads=downloads or Markup(f"<li>{'none' if final else 'none yet'}</li>"),
        hooks=webhook_deliveries(deliveries, final=final),
    )


def _host(url: str) -> str:
    """An endpoint URL's host (with its port, if it names one)."""
    try:
        parts = urlsplit(url)
        return parts.netloc.rpartition("@")[2] or url
    except ValueError:
        return url


def webhook_deliveries(rows: Sequence[RowMapping], *, final: bool) -> Markup:
    """The webhook deliveries of a response or batch: one row per event and endpoint."""
    if final:
        empty = "none: no enabled endpoint wanted its event"
    else:
        empty = "none yet: its event is written when it ends"
    return render(
        '<section class="card webhooks"><h2>Webhook deliveries</h2>{table}</section>',
        table=table(
            (
                "Endpoint",
                "Event",
                "Status",
                "Attempts",
                "Last status",
                "Last error",
                "Next attempt",
                "Delivered",
            ),
            (
                (
                    render(
                        '<span title="{id}: {url}">{host}</span>',
                        id=d["endpoint_id"],
                        url=d["url"],
                        host=_host(d["url"]),
                    ),
                    d["event_type"],
                    status(d["status"]),
                    d["attempts"],
                    d["last_status"],
                    d["last_error"],
                    d["next_attempt_at"] if d["status"] == DeliveryStatus.PENDING else None,
                    d["delivered_at"],
                )
                for d in rows
            ),
            empty=empty,
            cls="deliveries stack",
        ),
    )


def _took(start: dt.datetime | None, end: dt.datetime | None) -> str | None:
    if start is None or end is None:
        return None
    return duration(max(0, round((end - start).total_seconds())))


def _validation(
    batch_id: str, count: int, rows: Sequence[RowMapping], offset: int, page_size: int
) -> Markup:
    """Why the batch failed validation, as ``tiergate batch`` prints it, one page at a time."""
    if not count:
        return Markup("")
    pages: list[Markup] = []
    base = f"/dashboard/batches/{quote(batch_id)}"
    if offset > 0:
        pages.append(link(f"{base}?errors={max(0, offset - page_size)}", "← previous"))
    if offset + page_size < count:
        pages.append(link(f"{base}?errors={offset + page_size}", "next →"))
    shown = f"{offset + 1} to {offset + len(rows)} of {count}" if rows else f"none past {count}"
    return render(
        """<section class="card validation"><h2>Validation errors</h2>
<p class="meta">The input file was rejected: no line ran. Errors {shown}.</p>{table}
<nav class="pager" aria-label="validation error pages">{pages}</nav></section>""",
        shown=shown,
        table=table(
            ("Line", "Code", "Message"),
            ((e["line"], e["code"], e["message"]) for e in rows),
            empty="no error on this page",
            cls="validation stack",
        ),
        pages=join(pages),
    )


def batch_json(p: RowMapping) -> dict[str, Any]:
    """The live parts of a batch page."""
    return {
        "batch_id": p["batch_id"],
        "status": p["batch_status"],
        "total": p["total"],
        "done": (p["completed"] or 0) + (p["failed"] or 0),
        "percent": _percent(p),
        "fields": {
            "Status": p["batch_status"],
            "Total": text(p["total"]),
            "Pending": text(p["pending"]),
            "In progress": text(p["in_progress"]),
            "Completed": text(p["completed"]),
            "Failed": text(p["failed"]),
            "Finished per second": text(p["finished_per_second"]),
            "ETA": _eta(p),
            "Total tokens": text(p["total_tokens"]),
            "Cost (USD)": text(p["cost_usd"]),
        },
    }


def _facts(pairs: Iterable[tuple[str, Any]], *, live: bool = False) -> Markup:
    return render(
        '<dl class="facts">{items}</dl>',
        items=join(
            render('<div><dt>{k}</dt><dd data-field="{k}">{v}</dd></div>', k=k, v=v)
            for k, v in pairs
        ),
    )


def requests(q: str, rows: Sequence[RowMapping] | None) -> Markup:
    form = render(
        """<form class="filters" method="get" action="/dashboard/requests">
<label>Id or custom_id <input name="q" value="{q}" required></label>
<button type="submit">Search</button></form>""",
        q=q,
    )
    if rows is None:
        return form
    return join(
        (
            form,
            table(
                ("Request", "custom_id", "Batch", "Key", "Model", "Tier", "Status", "Created"),
                (
                    (
                        link(f"/dashboard/requests/{quote(r['id'])}", r["id"]),
                        r["custom_id"],
                        link(f"/dashboard/batches/{quote(r['batch_id'])}", r["batch_id"])
                        if r["batch_id"]
                        else None,
                        r["key_name"],
                        r["model"],
                        r["tier"],
                        status(r["status"]),
                        r["created_at"],
                    )
                    for r in rows
                ),
                empty="no request matches",
                cls="requests stack",
            ),
        )
    )


def request(
    r: RowMapping, bodies: RowMapping | None, deliveries: Sequence[RowMapping] | None = None
) -> Markup:
    """A request: facts, timeline, bodies on demand; a background response its webhook
    deliveries (``deliveries``: None for rows that have none to show)."""
    deferred = r["batch_id"] is not None or r["service_tier"] == "flex" or r["background"]
    error = r["error"] or {}
    steps: list[tuple[str, Any, Any]] = [("created", r["created_at"], None)]
    if r["batch_id"] is not None:
        steps.append(("queued", r["created_at"], f"line {text(r['line_no'])} of its batch"))
    elif deferred:
        steps.append(("queued", r["created_at"], f"{r['service_tier']} queue of {r['model']}"))
    if r["started_at"]:
        by = f"claimed by {r['claimed_by']}" if r["claimed_by"] else None
        steps.append(("started", r["started_at"], by))
    for failed in r["attempt_errors"] or []:  # each retried attempt, with its error
        cause = failed.get("error") or {}
        where = f" ({failed['deployment']})" if failed.get("deployment") else ""
        steps.append(
            (
                f"attempt {failed.get('attempt')} failed",
                failed.get("at"),
                f"{cause.get('code')}: {cause.get('message')}{where}",
            )
        )
    steps.append(
        (
            f"attempts: {r['attempts']}",
            None,
            f"{error.get('code')}: {error.get('message')}" if error else "no error recorded",
        )
    )
    if r["not_before"]:
        steps.append(("retry due", r["not_before"], "backing off after a failed attempt"))
    if r["finished_at"]:
        steps.append((f"finished: {r['status']}", r["finished_at"], r["response_status"]))
    timeline = render(
        '<ol class="timeline">{items}</ol>',
        items=join(
            render(
                "<li><strong>{what}</strong> <time>{when}</time><span>{detail}</span></li>",
                what=what,
                when=when if when is not None else Markup(""),
                detail=detail if detail is not None else Markup(""),
            )
            for what, when, detail in steps
        ),
    )
    facts = _facts(
        (
            ("Status", status(r["status"])),
            ("Key", r["key_name"]),
            ("Model", r["model"]),
            ("Deployment", r["deployment"]),
            ("Executor", r["path"]),
            ("Response cache", r["cache"]),
            ("Endpoint", r["endpoint"]),
            ("Tier", r["tier"]),
            ("Background", r["background"]),
            ("Stream", r["stream"]),
            (
                "Batch",
                link(f"/dashboard/batches/{quote(r['batch_id'])}", r["batch_id"])
                if r["batch_id"]
                else None,
            ),
            ("custom_id", r["custom_id"]),
            ("Line", r["line_no"]),
            ("Input tokens", r["input_tokens"]),
            ("Cached tokens", r["cached_tokens"]),
            ("Output tokens", r["output_tokens"]),
            ("Reasoning tokens", r["reasoning_tokens"]),
            ("Total tokens", r["total_tokens"]),
            ("Cost (USD)", r["cost_usd"]),
            *_provider_job(r),
        )
    )
    if bodies is None:
        shown = render(
            '<p><a class="button" href="/dashboard/requests/{id}?bodies=1">Show bodies</a></p>',
            id=quote(r["id"]),
        )
    else:
        shown = render(
            "<h2>Request body</h2><pre>{body}</pre><h2>Response body</h2><pre>{response}</pre>",
            body=json.dumps(bodies["body"], indent=2, ensure_ascii=False),
            response=json.dumps(bodies["response_body"], indent=2, ensure_ascii=False),
        )
    hooks = (
        Markup("")
        if deliveries is None
        else webhook_deliveries(deliveries, final=r["status"] in FINAL)
    )
    return render(
        '<p class="meta"><code>{id}</code></p>{facts}<h2>Timeline</h2>{timeline}{hooks}{shown}',
        id=r["id"],
        facts=facts,
        timeline=timeline,
        hooks=hooks,
        shown=shown,
    )


def _provider_job(r: RowMapping) -> list[tuple[str, Any]]:
    """The provider Batch API job holding a row (none: no facts)."""
    if not r["upstream_job_id"]:
        return []
    return [
        (
            "Provider job",
            link(f"/dashboard/jobs#{quote(r['upstream_job_id'])}", r["upstream_job_id"]),
        ),
        ("Provider batch", r["job_upstream_batch_id"]),
        ("Job status", status(r["job_status"]) if r["job_status"] else None),
        ("Provider status", r["job_upstream_status"]),
    ]


def _counts(counts: dict[str, int] | None) -> str | None:
    """``completed 98, failed 2``: how a job's rows ended."""
    if not counts:
        return None
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items()))


def _job_cell(j: RowMapping) -> Markup:
    """A job's id, the anchor a request page links to."""
    return render('<code id="{id}">{id}</code>', id=j["id"])


def jobs(
    open_jobs: Sequence[RowMapping],
    ended: Sequence[RowMapping],
    batch_deployments: Sequence[str],
    *,
    offset: int,
    page_size: int,
    more: bool,
) -> Markup:
    """Providers' Batch API jobs: every open one, then the ended ones, newest first, a page
    at a time (``more``: an older page exists)."""
    if batch_deployments:
        uses = render(
            "Deployments with <code>executor: batch</code>: {names}.",
            names=", ".join(batch_deployments),
        )
    else:
        uses = Markup("No deployment of this configuration has <code>executor: batch</code>.")
    pages: list[Markup] = []
    if offset > 0:
        pages.append(link(f"/dashboard/jobs?ended={max(0, offset - page_size)}", "← newer"))
    if more:
        pages.append(link(f"/dashboard/jobs?ended={offset + page_size}", "older →"))
    shown = (
        render(
            '<p class="meta">Jobs {a} to {b}, newest first.</p>',
            a=offset + 1,
            b=offset + len(ended),
        )
        if ended
        else Markup("")
    )
    return render(
        """<p class="meta">Jobs of providers' Batch APIs that deferred rows were sent in.
{uses}</p>
<section class="card jobs-open"><h2>Open</h2>
<p class="meta">Being submitted or running at the provider, newest first.</p>{open}</section>
<section class="card jobs-ended"><h2>Ended</h2>{shown}{ended}
<nav class="pager" aria-label="ended job pages">{pages}</nav></section>""",
        uses=uses,
        open=table(
            (
                "Job",
                "Model",
                "Deployment",
                "API",
                "Status",
                "Provider batch",
                "Provider status",
                "Rows",
                "Polls",
                "Created",
                "Age",
                "Next poll",
                "Last error",
            ),
            (
                (
                    _job_cell(j),
                    j["model"],
                    j["deployment"],
                    j["api"],
                    status(j["status"]),
                    j["upstream_batch_id"],
                    j["upstream_status"],
                    j["rows"],
                    j["polls"],
                    j["created_at"],
                    duration(round(j["age_s"])),
                    j["next_poll_at"],
                    j["last_error"],
                )
                for j in open_jobs
            ),
            empty="no open provider job",
            cls="jobs open-jobs stack",
        ),
        shown=shown,
        ended=table(
            (
                "Job",
                "Model",
                "Deployment",
                "API",
                "Provider batch",
                "Provider status",
                "Rows",
                "Rows ended",
                "Created",
                "Ended",
                "Took",
                "Last error",
            ),
            (
                (
                    _job_cell(j),
                    j["model"],
                    j["deployment"],
                    j["api"],
                    j["upstream_batch_id"],
                    j["upstream_status"],
                    j["rows"],
                    _counts(j["counts"]),
                    j["created_at"],
                    j["ended_at"],
                    duration(round(j["age_s"])),
                    j["last_error"],
                )
                for j in ended
            ),
            empty="no job on this page" if offset else "no provider job has ended",
            cls="jobs ended-jobs stack",
        ),
        pages=join(pages),
    )


def usage(rows: Sequence[RowMapping], days: int) -> Markup:
    charts = [usage_chart(rows, days, "total_tokens", "tokens", "Total tokens")]
    if any(r["cost_usd"] is not None for r in rows):
        charts.append(usage_chart(rows, days, "cost_usd", "USD", "Cost (USD)"))
    charts.append(usage_chart(rows, days, "total_tokens", "tokens", "Total tokens", by="tier"))
    return render(
        """<p class="meta">Last {days} days (UTC), from the view <code>tiergate_usage_by_key</code>.
</p><section class="cards">{charts}</section>{table}""",
        days=days,
        charts=join(charts),
        table=table(
            (
                "Day",
                "Key",
                "Model",
                "Tier",
                "Requests",
                "Input tokens",
                "Cached",
                "Output tokens",
                "Reasoning",
                "Total tokens",
                "Cost (USD)",
            ),
            (
                (
                    r["day"].strftime("%Y-%m-%d"),
                    r["key_name"],
                    r["model"],
                    r["tier"],
                    r["requests"],
                    r["input_tokens"],
                    r["cached_tokens"],
                    r["output_tokens"],
                    r["reasoning_tokens"],
                    r["total_tokens"],
                    r["cost_usd"],
                )
                for r in rows
            ),
            empty=f"no usage in the last {days} days",
            cls="usage stack",
        ),
    )


PALETTE = ("#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#65a30d")


def _series(row: RowMapping, by: str) -> str:
    return str(row["tier"]) if by == "tier" else f"{row['key_name']} · {row['model']}"


def usage_chart(
    rows: Sequence[RowMapping],
    days: int,
    field: str,
    unit: str,
    title: str,
    *,
    by: str = "key and model",
) -> Markup:
    """Stacked bars per day of the window, one colour per key and model, or per pricing tier
    (``by="tier"``: default, flex, batch) (inline SVG)."""
    today = dt.datetime.now(dt.UTC).date()
    slots = [f"{today - dt.timedelta(days=i):%Y-%m-%d}" for i in range(days - 1, -1, -1)]
    series = sorted({_series(r, by) for r in rows})
    per: dict[tuple[str, str], float] = {}
    for r in rows:
        cell = (f"{r['day']:%Y-%m-%d}", _series(r, by))
        per[cell] = per.get(cell, 0.0) + float(r[field] or 0)
    top = max((sum(per.get((d, s), 0.0) for s in series) for d in slots), default=0.0) or 1.0
    width, height, pad = 600, 220, 30
    slot = (width - pad) / len(slots)
    shapes: list[Markup] = []
    for i, day in enumerate(slots):
        y = float(height - pad)
        for j, name in enumerate(series):
            value = per.get((day, name), 0.0)
            h = (height - 2 * pad) * value / top
            y -= h
            if value:
                shapes.append(
                    render(
                        '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{c}">'
                        "<title>{t}</title></rect>",
                        x=f"{pad + i * slot + slot * 0.15:.1f}",
                        y=f"{y:.1f}",
                        w=f"{slot * 0.7:.1f}",
                        h=f"{h:.1f}",
                        c=PALETTE[j % len(PALETTE)],
                        t=f"{day} {name}: {_amount(value)} {unit}",
                    )
                )
        if i % 3 == (len(slots) - 1) % 3:
            shapes.append(
                render(
                    '<text x="{x}" y="{y}" text-anchor="middle">{d}</text>',
                    x=f"{pad + i * slot + slot / 2:.1f}",
                    y=height - 10,
                    d=day[5:],
                )
            )
    legend = join(
        render(
            '<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10"'
            ' fill="{c}"/></svg> {name}</span>',
            c=PALETTE[j % len(PALETTE)],
            name=name,
        )
        for j, name in enumerate(series)
    )
    return render(
        '<div class="card"><h2>{title} per day, by {by}</h2>'
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{title} per day">'
        '<text x="{pad}" y="16">{top} {unit}</text>'
        '<line x1="{pad}" y1="{base}" x2="{w}" y2="{base}" stroke="#999"/>{shapes}</svg>'
        '<div class="legend">{legend}</div></div>',
        title=title,
        by=by,
        w=width,
        h=height,
        pad=pad,
        base=height - pad,
        top=_amount(top) if rows else "0",
        unit=unit,
        shapes=join(shapes),
        legend=legend or Markup('<span class="empty">no usage yet</span>'),
    )


def _amount(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.4g}"


def _limits(key: RowMapping) -> str:
    """``rpm 600, tpm 200,000, $12.50 of $50/month, weight 3`` (``none`` without any)."""
    parts = []
    if key["rpm"] is not None:
        parts.append(f"rpm {key['rpm']:,}")
    if key["tpm"] is not None:
        parts.append(f"tpm {key['tpm']:,}")
    if key["budget_usd"] is not None:
        spent = key["spent_usd"] or 0
        parts.append(f"${spent:,.2f} of ${key['budget_usd']:,.2f}/{key['budget_period']}")
    if key["weight"] != 1:
        parts.append(f"weight {key['weight']:g}")
    return ", ".join(parts) or "none"


def keys(rows: Sequence[RowMapping]) -> Markup:
    return table(
        ("Name", "Prefix", "Models", "Limits", "Admin", "Created", "Last used", "Revoked"),
        (
            (
                k["name"],
                render("<code>{p}…</code>", p=k["key_prefix"]),
                ", ".join(k["models"]) if k["models"] else "all",
                _limits(k),
                k["is_admin"],
                k["created_at"],
                k["last_used_at"],
                k["revoked_at"],
            )
            for k in rows
        ),
        empty="no keys",
        cls="keys stack",
    )


def process_json(p: RowMapping, fresh_s: float) -> dict[str, Any]:
    """A row of ``processes`` for the overview: live while it beat within ``fresh_s`` (what
    the sweeps and ``tiergate deployments`` count as live), stale after that."""
    silent = float(p["silent_s"])
    stale = silent > fresh_s
    return {
        "id": p["id"],
        "role": p["kind"],
        "host": p["hostname"],
        "pid": p["pid"],
        "started": text(p["started_at"]),
        "last_beat": f"{_ago(silent)} ago",
        "in_flight": sum(int(d.get("in_flight") or 0) for d in p["deployments"] or []),
        "state": f"stale: silent for {_ago(silent)}" if stale else "live",
        "stale": stale,
    }


def _ago(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else duration(round(seconds))

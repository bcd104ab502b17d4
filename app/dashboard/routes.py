"""``/dashboard``: a read-only admin dashboard served by the gateway itself.

Every route is GET except sign-in and sign-out (the only state they change is the session).
Pages need a session of an admin key (app/dashboard/session.py); without one, pages redirect
to the sign-in page and the JSON endpoints answer 401. Every answer forbids other origins
(Content-Security-Policy ``default-src 'self'``) and framing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from app.dashboard import pages
from app.dashboard.html import Markup
from app.dashboard.session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Admin,
    clear_cookie,
    csrf_ok,
    csrf_token,
    current_admin,
    new_token,
    set_cookie,
)
from app.gateway.services import Services
from app.settings import DeploymentConfig
from app.store.dashboard import PAGE, DashboardStore
from app.store.presence import process_views
from app.upstream.engine_watch import engine_summary
from app.vocabulary import BatchStatus, ExecutorKind, Status

HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
RPM_MINUTES = 15
USAGE_DAYS = 14
SIGN_IN = "/dashboard/sign-in"

Handler = Callable[[Request, Admin], Awaitable[Response]]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _store(request: Request) -> DashboardStore:
    return DashboardStore(_services(request).engine)


def _secure(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def _html(
    request: Request, page: str, title: str, body: Any, admin: Admin | None, status: int = 200
) -> Response:
    csrf = csrf_token(request)
    response = HTMLResponse(
        pages.layout(page, title, body, admin=admin.name if admin is not None else None, csrf=csrf),
        status_code=status,
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        set_cookie(request, response, CSRF_COOKIE, csrf, SESSION_TTL_S)
    return _secure(response)


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for admins: anyone else is sent to the sign-in page."""

    async def endpoint(request: Request) -> Response:
        admin = await current_admin(request, _store(request))
        if admin is None:
            return _secure(RedirectResponse(SIGN_IN, status_code=303))
        return await handler(request, admin)

    return endpoint


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A JSON endpoint for the pages' scripts: 401 without an admin session."""

    async def endpoint(request: Request) -> Response:
        admin = await current_admin(request, _store(request))
        if admin is None:
            return _secure(JSONResponse({"error": "sign in with an admin key"}, status_code=401))
        return _secure(await handler(request, admin))

    return endpoint


async def sign_in_page(request: Request) -> Response:
    if await current_admin(request, _store(request)) is not None:
        return _secure(RedirectResponse("/dashboard", status_code=303))
    return _html(request, "sign-in", "Sign in", pages.sign_in(csrf_token(request), None), None)


async def sign_in(request: Request) -> Response:
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    secret = form.get("key")
    if not csrf_ok(request, submitted if isinstance(submitted, str) else None):
        return _html(
            request,
            "sign-in",
            "Sign in",
            pages.sign_in(csrf_token(request), "The form expired: please sign in again."),
            None,
            status=403,
        )
    key = await _services(request).keys.find(secret) if isinstance(secret, str) else None
    if key is None or not key.is_admin:
        message = "Unknown key." if key is None else "This key is not an admin key."
        return _html(
            request, "sign-in", "Sign in", pages.sign_in(csrf_token(request), message), None, 403
        )
    token = new_token()
    await _store(request).create_session(token, key.id, SESSION_TTL_S)
    response = RedirectResponse("/dashboard", status_code=303)
    set_cookie(request, response, SESSION_COOKIE, token, SESSION_TTL_S)
    return _secure(response)


async def sign_out(request: Request) -> Response:
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    if not csrf_ok(request, submitted if isinstance(submitted, str) else None):
        return _secure(RedirectResponse("/dashboard", status_code=303))
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await _store(request).delete_session(token)
    response = RedirectResponse(SIGN_IN, status_code=303)
    clear_cookie(request, response, SESSION_COOKIE)
    return _secure(response)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return _secure(Response("not found", status_code=404, media_type="text/plain"))
    data = resources.files("app.dashboard").joinpath("static", name).read_bytes()
    response = Response(data, media_type=STATIC[name])
    _secure(response)
    response.headers["cache-control"] = "no-cache"
    return response


@page
async def overview(request: Request, admin: Admin) -> Response:
    return _html(request, "overview", "Overview", pages.overview(), admin)


@api
async def overview_json(request: Request, admin: Admin) -> Response:
    services = _services(request)
    store = _store(request)
    rows = await store.requests_per_minute(RPM_MINUTES)
    now_minute = int(time.time()) // 60 * 60
    minutes = [now_minute - 60 * i for i in range(RPM_MINUTES - 1, -1, -1)]
    tiers = sorted({r["tier"] for r in rows})
    per = {(r["minute"], r["tier"]): r for r in rows}
    total = sum(r["requests"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    counted = await services.queue_depth.read()
    depth: dict[tuple[str, str], dict[str, int]] = {}
    for model, tier, status, n in counted.depth:
        depth.setdefault((model, tier), {})[status] = n
    fresh_s = 3 * services.settings.limits.heartbeat_s
    views = await process_views(services.engine, fresh_s=fresh_s)
    processes = await store.processes()
    configs = {
        (model.name, d.name): d
        for model in services.settings.models.values()
        for d in model.deployments
    }
    flights: dict[tuple[str, str], dict[str, Any]] = {
        at: {"in_flight": 0, "states": set(), "executor": d.executor_text(), "engines": []}
        for at, d in configs.items()
    }
    for view in views:
        for entry in view["deployments"] or []:
            seen = flights.setdefault(
                (entry["model"], entry["deployment"]),
                {"in_flight": 0, "states": set(), "executor": "not in this config", "engines": []},
            )
            seen["in_flight"] += entry.get("in_flight", 0)
            seen["states"].add(entry.get("state"))
            if entry.get("engine"):
                seen["engines"].append(entry["engine"])
    return JSONResponse(
        {
            "requests_per_minute": {
                "minutes": minutes,
                "tiers": {
                    tier: [per[(m, tier)]["requests"] if (m, tier) in per else 0 for m in minutes]
                    for tier in tiers
                },
            },
            "window_minutes": RPM_MINUTES,
            "requests": total,
            "errors": errors,
            "error_rate": errors / total if total else 0.0,
            "by_tier": [
                {
                    "service_tier": tier,
                    "requests": sum(r["requests"] for r in rows if r["tier"] == tier),
                    "errors": sum(r["errors"] for r in rows if r["tier"] == tier),
                }
                for tier in tiers
            ],
            "queue_depth": [
                {
                    "model": model,
                    "service_tier": tier,
                    "pending": by_status.get(Status.PENDING, 0),
                    "in_progress": by_status.get(Status.IN_PROGRESS, 0),
                }
                for (model, tier), by_status in sorted(depth.items())
            ],
            "queue_depth_age_s": counted.age_s,
            "in_flight": [
                {
                    "model": model,
                    "deployment": deployment,
                    "executor": v["executor"],
                    "engine": _engine_text(configs.get((model, deployment)), v["engines"]),
                    "state": ", ".join(sorted(str(s) for s in v["states"] if s))
                    or "no process reporting",
                    "in_flight": v["in_flight"],
                }
                for (model, deployment), v in sorted(flights.items())
            ],
            "processes": [pages.process_json(p, fresh_s) for p in processes],
            "stale_after_s": fresh_s,
        }
    )


def _choice(request: Request, name: str, allowed: set[str] | None = None) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and allowed is not None and value not in allowed:
        return None
    return value


@page
async def batch_list(request: Request, admin: Admin) -> Response:
    store = _store(request)
    key_id = _choice(request, "key")
    status = _choice(request, "status", {s.value for s in BatchStatus})
    rows = await store.batches(key_id, status)
    keys = await store.keys()
    body = pages.batches(rows, keys, key_id, status)
    return _html(request, "batches", "Batches", body, admin)


@page
async def batch(request: Request, admin: Admin) -> Response:
    store = _store(request)
    found = await store.batch(request.path_params["id"])
    if found is None:
        return _html(request, "batches", "Batch not found", Markup(""), admin, 404)
    progress, row, errors = found
    offset = _offset(request, "errors")
    invalid = (
        await store.validation_errors(row["id"], offset, PAGE) if row["validation_errors"] else []
    )
    deliveries = await store.deliveries(row["id"])
    body = pages.batch(
        progress, row, errors, invalid, offset=offset, page_size=PAGE, deliveries=deliveries
    )
    return _html(request, "batches", "Batch", body, admin)


def _offset(request: Request, name: str) -> int:
    """A non-negative integer query parameter (0 when absent or not one)."""
    value = request.query_params.get(name) or ""
    return int(value) if value.isdigit() and len(value) < 10 else 0


@api
async def batch_json(request: Request, admin: Admin) -> Response:
    found = await _store(request).batch(request.path_params["id"])
    if found is None:
        return JSONResponse({"error": "no such batch"}, status_code=404)
    return JSONResponse(pages.batch_json(found[0]))


@page
async def request_search(request: Request, admin: Admin) -> Response:
    q = (request.query_params.get("q") or "").strip()
    rows = await _store(request).find_requests(q) if q else None
    return _html(request, "requests", "Requests", pages.requests(q, rows), admin)


@page
async def request_detail(request: Request, admin: Admin) -> Response:
    store = _store(request)
    id = request.path_params["id"]
    row = await store.request(id)
    if row is None:
        return _html(request, "requests", "Request not found", Markup(""), admin, 404)
    bodies = await store.request_bodies(id) if request.query_params.get("bodies") else None
    # Only a background response has webhook events (docs/webhooks.md).
    hooks = await store.deliveries(id) if row["background"] and row["batch_id"] is None else None
    body = pages.request(row, bodies, hooks)
    return _html(request, "requests", "Request", body, admin)


@page
async def jobs(request: Request, admin: Admin) -> Response:
    store = _store(request)
    offset = _offset(request, "ended")
    open_jobs = await store.open_jobs()
    ended = await store.ended_jobs(offset, PAGE + 1)
    batch_deployments = [
        f"{model.name}/{d.name}"
        for model in _services(request).settings.models.values()
        for d in model.deployments
        if d.executor == ExecutorKind.BATCH
    ]
    body = pages.jobs(
        open_jobs,
        ended[:PAGE],
        batch_deployments,
        offset=offset,
        page_size=PAGE,
        more=len(ended) > PAGE,
    )
    return _html(request, "jobs", "Provider jobs", body, admin)


@page
async def usage(request: Request, admin: Admin) -> Response:
    rows = await _store(request).usage_by_day(USAGE_DAYS)
    return _html(request, "usage", "Usage", pages.usage(rows, USAGE_DAYS), admin)


@page
async def keys(request: Request, admin: Admin) -> Response:
    return _html(request, "keys", "Keys", pages.keys(await _store(request).keys()), admin)


@page
async def download(request: Request, admin: Admin) -> Response:
    services = _services(request)
    file = await _store(request).file(request.path_params["id"])
    if file is None:
        return _secure(Response("not found", status_code=404, media_type="text/plain"))
    name = "".join(c for c in file["filename"] if c.isalnum() or c in "._-") or file["id"]
    return _secure(
        StreamingResponse(
            services.files.chunks(file["id"]),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    )


routes = [
    Route("/dashboard", overview, methods=["GET"]),
    Route(SIGN_IN, sign_in_page, methods=["GET"]),
    Route(SIGN_IN, sign_in, methods=["POST"]),
    Route("/dashboard/sign-out", sign_out, methods=["POST"]),
    Route("/dashboard/static/{name}", static, methods=["GET"]),
    Route("/dashboard/api/overview", overview_json, methods=["GET"]),
    Route("/dashboard/api/batches/{id}", batch_json, methods=["GET"]),
    Route("/dashboard/batches", batch_list, methods=["GET"]),
    Route("/dashboard/batches/{id}", batch, methods=["GET"]),
    Route("/dashboard/jobs", jobs, methods=["GET"]),
    Route("/dashboard/requests", request_search, methods=["GET"]),
    Route("/dashboard/requests/{id}", request_detail, methods=["GET"]),
    Route("/dashboard/usage", usage, methods=["GET"]),
    Route("/dashboard/keys", keys, methods=["GET"]),
    Route("/dashboard/files/{id}", download, methods=["GET"]),
]


def _engine_text(config: DeploymentConfig | None, states: list[dict[str, Any]]) -> str:
    """The engine cell of the deployments table ("-" without ``engine:``)."""
    summary = engine_summary(config, states) if config is not None else None
    return summary["text"] if summary is not None else "-"

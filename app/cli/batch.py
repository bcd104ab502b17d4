"""``tiergate batch ...``: submit a JSONL file, watch it with a progress bar, fetch results.

Talks to a running gateway over HTTP like any client: ``--url`` (or ``TIERGATE_URL``,
default http://127.0.0.1:8080) and ``--api-key`` (or ``TIERGATE_API_KEY``, else the
embedded mode's ``$TIERGATE_HOME/dev-key``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
from tqdm import tqdm

from app.vocabulary import FINAL_BATCH, Endpoint

POLL_S = 1.0
Command = Callable[[argparse.Namespace, Any], int]


class ProgressReader:
    """A file wrapper that advances a progress bar as httpx reads it."""

    def __init__(self, file: IO[bytes], bar: tqdm[Any]) -> None:
        self.file = file
        self.bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.bar.update(len(data))
        return data


DEFAULT_URL = "http://127.0.0.1:8080"


def gateway_url(args: argparse.Namespace) -> str:
    """``--url``, else ``TIERGATE_URL``, else the default local gateway."""
    return str(args.url or os.environ.get("TIERGATE_URL") or DEFAULT_URL).rstrip("/")


def client_for(args: argparse.Namespace) -> httpx.Client:
    url = gateway_url(args)
    key = args.api_key or os.environ.get("TIERGATE_API_KEY")
    if not key:
        dev_key = Path(os.environ.get("TIERGATE_HOME", ".tiergate")) / "dev-key"
        if dev_key.exists():
            key = dev_key.read_text().strip()
    if not key:
        sys.exit("tiergate: no API key: pass --api-key or set TIERGATE_API_KEY")
    return httpx.Client(
        base_url=url + "/v1",
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(300, connect=10),
    )


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        sys.exit(f"tiergate: HTTP {response.status_code}: {message}")
    return response.json()


def _summary(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    return (
        f"{batch['id']}  {batch['status']:<11} {counts['completed']}/{counts['total']} done, "
        f"{counts['failed']} failed  endpoint {batch['endpoint']}"
    )


def watch(client: httpx.Client, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll until the batch ends, with a bar of finished lines (rate and ETA by tqdm)."""
    with tqdm(
        total=batch["request_counts"]["total"] or None,
        unit="line",
        desc=batch["status"],
        dynamic_ncols=True,
    ) as bar:
        while batch["status"] not in FINAL_BATCH:
            time.sleep(POLL_S)
            batch = _check(client.get(f"/batches/{batch['id']}"))
            counts = batch["request_counts"]
            bar.total = counts["total"] or bar.total
            bar.set_description(batch["status"])
            bar.set_postfix(completed=counts["completed"], failed=counts["failed"])
            bar.update(counts["completed"] + counts["failed"] - bar.n)
    return batch


def download(client: httpx.Client, file_id: str, path: Path) -> int:
    """Write file ``file_id`` to ``path`` (opened only once the gateway answered it)."""
    written = 0
    with client.stream("GET", f"/files/{file_id}/content") as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
    return written


def save_results(client: httpx.Client, batch: dict[str, Any], out: Path) -> None:
    """The output file to ``out`` and the error file beside it, each only if the batch has
    one: a batch that failed validation (or whose every line failed) writes no empty file."""
    if batch["output_file_id"]:
        n = download(client, batch["output_file_id"], out)
        print(f"output: {out} ({n} bytes)", file=sys.stderr)
    elif batch["status"] == "failed":
        print("tiergate: no output file written: the batch failed validation", file=sys.stderr)
    else:
        print(
            f"tiergate: no output file written: the batch has none ({batch['status']})",
            file=sys.stderr,
        )
    if batch["error_file_id"]:
        errors = out.with_name(out.stem + ".errors" + out.suffix)
        download(client, batch["error_file_id"], errors)
        print(f"errors: {errors}", file=sys.stderr)


def submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"tiergate: no such file: {path}", file=sys.stderr)
        return 2
    with client_for(args) as client:
        with (
            path.open("rb") as file,
            tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="upload") as bar,
        ):
            uploaded = _check(
                client.post(
                    "/files",
                    data={"purpose": "batch"},
                    files={"file": (path.name, ProgressReader(file, bar))},  # type: ignore[dict-item]
                )
            )
        batch = _check(
            client.post(
                "/batches",
                json={
                    "input_file_id": uploaded["id"],
                    "endpoint": args.endpoint,
                    "completion_window": args.completion_window,
                },
            )
        )
        print(f"created {batch['id']} from {uploaded['id']}", file=sys.stderr)
        if not (args.wait or args.output):
            print(batch["id"])
            return 0
        batch = watch(client, batch)
        print(_summary(batch), file=sys.stderr)
        for error in (batch.get("errors") or {}).get("data") or []:
            print(
                f"  line {error.get('line')}: {error['code']}: {error['message']}", file=sys.stderr
            )
        if args.output:
            save_results(client, batch, Path(args.output))
        print(batch["id"])
        return exit_code(batch, allow_failures=args.allow_failures)


def exit_code(batch: dict[str, Any], *, allow_failures: bool) -> int:
    """0 for a batch that completed with every line answered; 1 if it did not complete, or
    if lines failed (unless ``allow_failures``), saying how many."""
    if batch["status"] != "completed":
        return 1
    failed, total = batch["request_counts"]["failed"], batch["request_counts"]["total"]
    if failed and not allow_failures:
        print(
            f"tiergate: {failed} of {total} lines failed (error file {batch['error_file_id']});"
            " pass --allow-failures to exit 0 anyway",
            file=sys.stderr,
        )
        return 1
    return 0


def list_batches(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        page = _check(client.get("/batches", params={"limit": args.limit}))
        for batch in page["data"]:
            print(_summary(batch))
    return 0


def status(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        batch = _check(client.get(f"/batches/{args.batch_id}"))
        print(_summary(batch))
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            if batch.get(key):
                print(f"  {key}: {batch[key]}")
        for error in (batch.get("errors") or {}).get("data") or []:
            print(f"  line {error.get('line')}: {error['code']}: {error['message']}")
    return 0


def reaching(run: Callable[[argparse.Namespace], int]) -> Command:
    """``run`` as a ``tiergate`` command: a gateway it cannot reach is one line, exit 1."""

    def command(args: argparse.Namespace, settings: object) -> int:
        try:
            return run(args)
        except httpx.TransportError as exc:
            reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)).lower() or type(exc).__name__
            print(
                f"tiergate: cannot reach the gateway at {gateway_url(args)} ({reason});"
                " start it with `tiergate serve`, or point --url or TIERGATE_URL at it",
                file=sys.stderr,
            )
            return 1

    return command


def add_parser(sub: Any) -> None:
    batch = sub.add_parser("batch", help="submit and follow Batch API jobs on a running gateway")
    commands = batch.add_subparsers(dest="batch", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="gateway URL (default $TIERGATE_URL)")
    common.add_argument("--api-key", default=None, help="default $TIERGATE_API_KEY")

    run = commands.add_parser("submit", parents=[common], help="upload FILE and create a batch")
    run.add_argument("file")
    run.add_argument(
        "--endpoint",
        required=True,
        choices=[str(endpoint) for endpoint in Endpoint],
    )
    run.add_argument("--completion-window", default="24h")
    run.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    run.add_argument("--output", default=None, help="write the output file here (implies --wait)")
    run.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 when the batch completed even if some lines failed",
    )
    run.set_defaults(func=reaching(submit))

    listing = commands.add_parser("list", parents=[common], help="recent batches")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=reaching(list_batches))

    show = commands.add_parser("status", parents=[common], help="one batch")
    show.add_argument("batch_id")
    show.set_defaults(func=reaching(status))

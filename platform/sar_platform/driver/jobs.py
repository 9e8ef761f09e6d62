"""`sar jobs list | status | logs | stop`: following and steering the Ray Jobs that `sar submit`
started, over the cluster's Jobs API (the dashboard address, e.g. http://127.0.0.1:8265).

Token authentication (Ray >= 2.52, the default for clusters Ray starts itself from 2.59 on) is Ray's
own: with `RAY_AUTH_MODE=token` in this process's environment, Ray's client sends the cluster's
token, taken from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH` names, else
`~/.ray/auth_token` (`ray get-auth-token` prints it on the head). sar never reads, prints or
forwards the token itself.

Runs in the `sar` process (the submitter's machine).
"""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
RUN_LINE = "[sar] MLflow run "
"""The line a job's driver prints when it opens its top-level MLflow run: `[sar] MLflow run NAME: URL`."""
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C while submitting or following: sar detaches, the job goes on."""

AUTH_HELP = ("this cluster requires Ray's token: export RAY_AUTH_MODE=token and the cluster's token as "
             "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token); "
             "`ray get-auth-token` on the head prints it")


class JobsError(Exception):
    """A job command that cannot proceed; the message says why and what to do."""


def connect(address: str | None):
    """A Jobs API client for the cluster at `address` (the dashboard's http:// address)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not address:
        raise JobsError("no cluster address: pass --address http://<head>:8265 or export RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise JobsError(f"{address}: {AUTH_HELP} ({str(e).splitlines()[0]})") from e
    except ConnectionError as e:
        raise JobsError(f"{address}: no Ray dashboard answers there ({e}); is the cluster up, and the port "
                        "forwarded (ray dashboard CLUSTER.yaml / kubectl port-forward)?") from e


def status_of(client, job_id: str) -> str:
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise JobsError(f"no job {job_id} on {client.get_address()}: `sar jobs list` shows the jobs there") from e
        raise


def run_urls(logs: str) -> list[str]:
    """The MLflow runs a job's driver opened, as `NAME: URL` (the URL as this machine opens it,
    `local_link`), from its logs."""
    found = [line.split(RUN_LINE, 1)[1].strip() for line in logs.splitlines() if RUN_LINE in line]
    return [f"{name}: {local_link(url)}" for name, _, url in (r.partition(": ") for r in found)]


MLFLOW_URL_ENV = "SAR_MLFLOW_URL"
"""The cluster's MLflow server as this machine reaches it: the local end of the SSH tunnel or the
port-forward (default: http://127.0.0.1 at the server's port)."""


def local_link(url: str) -> str:
    """A run's URL as the driver printed it (the head's private address, an in-cluster service name)
    turned into one this machine opens: the same page on $SAR_MLFLOW_URL, or on 127.0.0.1 at the
    server's port with the command that forwards it there."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or parts.hostname in ("127.0.0.1", "localhost"):
        return url
    port = parts.port or 5000
    base = os.environ.get(MLFLOW_URL_ENV, "").rstrip("/")
    page = url[len(f"{parts.scheme}://{parts.netloc}"):]
    if base:
        return base + page
    return (f"http://127.0.0.1:{port}{page} (forward the server here first: `ray attach CLUSTER.yaml -p {port}` or "
            f"`kubectl port-forward svc/sar-platform-mlflow {port}:{port}`; inside the cluster: {url})")


def follow(client, job_id: str, poll_s: float = 2.0, out=sys.stdout) -> str:
    """Stream the job's log as the driver writes it (Ray's tail_job_logs websocket) until the job
    ends; returns its final status. A stream that breaks before the end goes on by polling from
    where it stopped."""
    import asyncio

    status_of(client, job_id)  # an unknown id is reported as such before streaming
    written = 0

    async def stream() -> None:
        nonlocal written
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            written += len(chunk)

    try:
        asyncio.run(stream())
    except (RuntimeError, OSError) as e:  # the websocket closed early (a proxy, a restarted dashboard)
        print(f"[sar] the log stream broke ({str(e).splitlines()[0] if str(e) else type(e).__name__}); polling", file=sys.stderr)
    while True:
        status = status_of(client, job_id)
        logs = client.get_job_logs(job_id)
        out.write(logs[written:])
        out.flush()
        written = max(written, len(logs))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def detach_hint(job_id: str, address: str | None) -> str:
    """What Ctrl-C while following prints: the job goes on, and how to follow or stop it."""
    where = f" --address {address}" if address and address != os.environ.get("RAY_ADDRESS") else ""
    return (f"[sar] detached: {job_id} goes on running on the cluster.\n"
            f"[sar] follow it: sar jobs logs {job_id} -f{where}\n"
            f"[sar] stop it:   sar jobs stop {job_id}{where}")


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def list_jobs(address: str | None) -> int:
    client = connect(address)
    jobs = sorted((j for j in client.list_jobs() if j.submission_id), key=lambda j: j.start_time or 0)
    rows = [("ID", "STATUS", "STARTED", "SPEC")]
    rows += [(j.submission_id, str(j.status.value), _time(j.start_time), (j.metadata or {}).get("sar.spec", j.entrypoint))
             for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    return 0


def show_status(address: str | None, job_id: str) -> int:
    client = connect(address)
    status_of(client, job_id)
    info = client.get_job_info(job_id)
    print(f"{job_id}: {info.status.value}")
    if info.message:
        print(f"  message:  {info.message}")
    print(f"  started:  {_time(info.start_time)}   ended: {_time(info.end_time)}")
    print(f"  spec:     {(info.metadata or {}).get('sar.spec', info.entrypoint)}")
    for run in run_urls(client.get_job_logs(job_id)):
        print(f"  MLflow:   {run}")
    return 0


def show_logs(address: str | None, job_id: str, follow_: bool) -> int:
    client = connect(address)
    if not follow_:
        status_of(client, job_id)
        print(client.get_job_logs(job_id), end="")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\n{detach_hint(job_id, address)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"[sar] {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def stop(address: str | None, job_id: str, wait: bool = True, timeout_s: float = 120.0) -> int:
    """Ask Ray to stop the job (SIGTERM to its driver, which ends its MLflow runs as KILLED; SIGKILL
    after the head's RAY_JOB_STOP_WAIT_TIME_S) and wait until it has stopped."""
    client = connect(address)
    status = status_of(client, job_id)
    if status in TERMINAL:
        print(f"{job_id} already ended: {status}")
        return 0
    client.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    while wait and status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
        status = status_of(client, job_id)
    print(f"{job_id}: {status}")
    return 0

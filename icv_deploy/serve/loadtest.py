"""Client-side tools: an `icv-serve` process on a free loopback port, and a bounded load generator.

Both are bounded: the server is stopped (SIGINT, then its whole process group) when the `with` block ends, and
`run_load` sends exactly N requests, C at a time, each with a client timeout, so a run always ends by itself.
Used by the tests and `benchmarks/serve_load.py`; traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class LocalServer:
    """`python -m icv_deploy.serve.cli --port P ARGS...` on loopback, ready when /readyz says so."""

    def __init__(self, args: list[str], env: dict | None = None, log_path=None, ready_timeout_s: float = 240.0):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.args, self.env, self.log_path, self.ready_timeout_s = list(args), env, log_path, ready_timeout_s
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LocalServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, **(self.env or {})}
        command = [sys.executable, "-m", "icv_deploy.serve.cli", "--host", LOOPBACK, "--port", str(self.port), *self.args]
        # Its own session: Ray's processes started under it are stopped together with it.
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until GET /readyz answers 200; raises if the process ends or the time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"icv-serve exited with code {self.process.returncode} (log: {self.log_path})")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"icv-serve not ready after {timeout_s:.0f} s (log: {self.log_path})")

    def descendants(self):
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGINT (icv-serve shuts Serve and Ray down), then SIGKILL whatever of its session is left."""
        if self.process is None:
            return
        leftovers = self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for child in leftovers:  # Ray daemons that left the session
            try:
                child.kill()
            except Exception:
                pass
        self.process.wait(10)
        self.process = None


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)  # answered requests, any status
    statuses: collections.Counter = field(default_factory=collections.Counter)  # HTTP status, or "timeout"/"error"
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # of the 200s
    answers: list = field(default_factory=list)  # (status, JSON body or text, Retry-After or None) per request

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        """Successful requests per second over the whole run."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile (nearest rank) of the answered requests, in seconds."""
        values = sorted(self.latencies_s)
        if not values:
            return float("nan")
        return values[max(0, math.ceil(q / 100.0 * len(values)) - 1)]

    def summary(self) -> dict:
        return {"requests": self.requests, "concurrency": self.concurrency, "wall_s": round(self.wall_s, 3),
                "throughput_rps": round(self.throughput, 4),
                "latency_s": {f"p{q}": round(self.percentile(q), 3) for q in (50, 95, 99)},
                "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


def post_infer(url: str, image: bytes, fields: dict, api_key: str | None = None, timeout_s: float = 120.0):
    """One POST /v1/infer: (status, JSON body or text). `fields` values may be lists (several instructions)."""
    data = [(name, value) for name, values in fields.items()
            for value in (values if isinstance(values, (list, tuple)) else [values])]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = requests.post(url + "/v1/infer", files={"image": ("image.png", image, "image/png")}, data=data,
                             headers=headers, timeout=timeout_s)
    try:
        return response.status_code, response.json(), response.headers
    except ValueError:
        return response.status_code, response.text, response.headers


def run_load(url: str, image: bytes, fields: dict, requests_n: int, concurrency: int, api_key: str | None = None,
             timeout_s: float = 120.0) -> LoadReport:
    """Send `requests_n` requests, `concurrency` at a time; each waits at most `timeout_s` for its answer."""

    def one(_):
        start = time.perf_counter()
        try:
            status, body, headers = post_infer(url, image, fields, api_key, timeout_s)
        except requests.Timeout:
            return "timeout", None, None, time.perf_counter() - start
        except requests.RequestException as exc:
            return "error", str(exc), None, time.perf_counter() - start
        return status, body, headers.get("Retry-After"), time.perf_counter() - start

    report = LoadReport(requests_n, concurrency, 0.0)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(requests_n)))
    report.wall_s = time.perf_counter() - start
    for status, body, retry_after, seconds in outcomes:
        report.statuses[status] += 1
        report.answers.append((status, body, retry_after))
        if isinstance(status, int):
            report.latencies_s.append(seconds)
        if status == 200:
            report.batch_sizes[body["batch_size"]] += 1
    return report

"""Load test of icv-serve on loopback: dynamic batching against --max-batch-size 1, in the same run.

For each max batch size, starts `icv-serve` on a free loopback port (a local Ray instance), sends one warm-up
request, then exactly N requests C at a time (each with a client timeout, so the run ends by itself), reads the
batch sizes the service reports, and stops it. Prints throughput, p50/p95/p99 latency, statuses and batch sizes.

    python benchmarks/serve_load.py --model demo --requests 64 --concurrency 16 --max-batch-size 1,8 --json out.json
    python benchmarks/serve_load.py --model /tmp/tiny --requests 8 --concurrency 4 --steps 2 --resolution 32
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from icv_deploy.serve.loadtest import LocalServer, post_infer, run_load

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="As icv-serve --model [default: $ICV_MODEL, else demo].")
@click.option("--requests", "requests_n", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--max-batch-size", "batch_sizes", default="1,8", show_default=True, help="Comma-separated, one run each.")
@click.option("--batch-wait-ms", type=float, default=50.0, show_default=True)
@click.option("--max-queue", type=int, default=None, help="icv-serve --max-queue [default: the concurrency].")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Per request, server side.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=ROOT / "examples" / "scene.png",
              show_default=True)
@click.option("--instruction", "instructions", multiple=True, default=["Segment the red ball"], show_default=True)
@click.option("--steps", default=None, help="Steps per request [default: the model's].")
@click.option("--resolution", default=None, help="Per request [default: the model's].")
@click.option("--serve-arg", "serve_args", multiple=True, help="Extra icv-serve argument (repeatable), e.g. --serve-arg=--threads=2.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(model, requests_n, concurrency, batch_sizes, batch_wait_ms, max_queue, timeout_s, image, instructions, steps,
         resolution, serve_args, json_path):
    """Throughput and latency of icv-serve under N requests at concurrency C, per --max-batch-size."""
    fields = {"instruction": list(instructions), "seed": "0"}
    fields.update({k: v for k, v in (("steps", steps), ("resolution", resolution)) if v is not None})
    data = image.read_bytes()
    runs = []
    for batch in [int(b) for b in batch_sizes.split(",")]:
        args = [*(["--model", model] if model else []), "--max-batch-size", str(batch), "--batch-wait-ms", str(batch_wait_ms),
                "--max-queue", str(max_queue if max_queue is not None else concurrency), "--timeout", str(timeout_s),
                *serve_args]
        log = Path(tempfile.gettempdir()) / f"serve_load_b{batch}.log"
        started = time.perf_counter()
        with LocalServer(args, log_path=log, ready_timeout_s=600) as server:
            ready_s = time.perf_counter() - started
            status, body, _ = post_infer(server.url, data, fields, timeout_s=timeout_s + 30)  # warm-up
            if status != 200:
                raise click.ClickException(f"warm-up request failed with {status}: {body}")
            report = run_load(server.url, data, fields, requests_n, concurrency, timeout_s=timeout_s + 30)
        summary = {"max_batch_size": batch, "startup_s": round(ready_s, 1), **report.summary()}
        runs.append(summary)
        click.echo(f"max batch {batch:>3}: {summary['throughput_rps']:.3f} req/s, latency p50 {summary['latency_s']['p50']} s "
                   f"p95 {summary['latency_s']['p95']} s p99 {summary['latency_s']['p99']} s, statuses "
                   f"{summary['statuses']}, batch sizes {summary['batch_sizes']}")
    if len(runs) > 1 and runs[0]["throughput_rps"] > 0:
        for run in runs[1:]:
            click.echo(f"max batch {run['max_batch_size']} / max batch {runs[0]['max_batch_size']}: "
                       f"{run['throughput_rps'] / runs[0]['throughput_rps']:.2f}x throughput")
    if json_path:
        meta = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": model,
                "requests": requests_n, "concurrency": concurrency, "fields": fields}
        json_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()

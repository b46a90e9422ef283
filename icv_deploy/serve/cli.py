"""`icv-serve`: InstructCV as an HTTP service on Ray Serve, locally or on a Ray cluster; `icv-serve config` writes
the same application as a Serve config file for `serve deploy`."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import click

from ..backends import ENGINES
from ..cli_common import debug_option, one_line_errors
from ..errors import IcvError
from .settings import API_KEY_ENV, APP_NAME, ServeSettings, is_loopback

IMPORT_PATH = "icv_deploy.serve.app:build_app"

EPILOG = f"""\b
Examples:
  icv-serve                                           # the demo model on http://127.0.0.1:8000
  icv-serve --model ./instructcv --device cuda --max-batch-size 16
  {API_KEY_ENV}=secret icv-serve --host 0.0.0.0 --port 8000   # other hosts need an API key
  icv-serve --address auto --replicas 4 --device cuda  # a running Ray cluster, one GPU per replica
  icv-serve config --output serve.yaml --replicas 4 --device cuda && serve deploy serve.yaml
\b
Calls:
  curl -F image=@cat.jpg -F "instruction=Segment the cat" http://127.0.0.1:8000/v1/infer
  GET /healthz (alive), /readyz (model loaded), /metrics (Prometheus), / (a web page)
"""


def settings_options(f):
    """The options `icv-serve` and `icv-serve config` share (every ServeSettings field, and host and port)."""
    d = ServeSettings()
    options = [
        click.option("--model", default=None, show_default="$ICV_MODEL, else demo",
                     help="A bundled model by name, a diffusers folder or hub id (torch), an ONNX folder (onnx) or an "
                          "engine folder (trt), an ONNX or OpenVINO IR folder (openvino), as icv-infer takes it. On a "
                          "cluster, a path every node has."),
        click.option("--engine", type=click.Choice(ENGINES), default=d.engine, show_default=True),
        click.option("--device", default=d.device, show_default=True, help="cpu, cuda or cuda:N (inside each replica)."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="Precision [default: torch fp16 on CUDA, fp32 on CPU; openvino the folder's, bf16 where the "
                          "CPU has it]."),
        click.option("--vae", type=click.Choice(["full", "tiny"]), default=None, help="As icv-infer --vae."),
        click.option("--replicas", type=click.IntRange(1), default=d.replicas, show_default=True,
                     help="Model replicas (each loads the model once)."),
        click.option("--max-batch-size", type=click.IntRange(1), default=d.max_batch_size, show_default=True,
                     help="Most requests run as one batch by a replica."),
        click.option("--batch-wait-ms", type=click.FloatRange(0), default=d.batch_wait_ms, show_default=True,
                     help="How long an idle replica waits for more requests to fill a batch."),
        click.option("--max-queue", type=click.IntRange(0), default=d.max_queue, show_default=True,
                     help="Requests that may wait for a replica; beyond them, 503 with Retry-After at once."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=d.timeout_s,
                     show_default=True, help="Seconds a request may take (queue and inference) before a 503."),
        click.option("--num-cpus", type=click.FloatRange(0), default=d.num_cpus, show_default=True,
                     help="Ray CPUs per model replica."),
        click.option("--num-gpus", type=click.FloatRange(0), default=None, show_default="1 with a cuda device, else 0",
                     help="Ray GPUs per model replica (1: one replica per GPU)."),
        click.option("--threads", type=click.IntRange(1), default=None, show_default="--num-cpus",
                     help="CPU threads per replica (torch; openvino's inference threads)."),
        click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=d.max_body_mb, show_default=True),
        click.option("--max-pixels", type=click.IntRange(1), default=d.max_pixels, show_default=True),
        click.option("--max-instructions", type=click.IntRange(1), default=d.max_instructions, show_default=True,
                     help="Instructions per request."),
        click.option("--max-instruction-chars", type=click.IntRange(1), default=d.max_instruction_chars, show_default=True),
        click.option("--max-steps", type=click.IntRange(1), default=d.max_steps, show_default=True),
        click.option("--max-resolution", type=click.IntRange(16), default=d.max_resolution, show_default=True),
        click.option("--cors-origin", "cors_origins", multiple=True,
                     help="Allow browser pages from this origin (repeatable); no CORS headers without it."),
        click.option("--api-key-env", default=d.api_key_env, show_default=True,
                     help="Environment variable holding the API key. When set, /v1/infer and /metrics need "
                          "`Authorization: Bearer <key>`."),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Address to listen on; any but loopback requires the API key unless --insecure."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True),
        click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_settings(host: str, insecure: bool, cors_origins, **values) -> ServeSettings:
    settings = ServeSettings(cors_origins=list(cors_origins), require_api_key=not is_loopback(host) and not insecure,
                             **values)
    settings.check()
    return settings


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("action", type=click.Choice(["run", "config"]), default="run")
@settings_options
@click.option("--address", default=None,
              help="A running Ray cluster (`auto`, host:port or ray://host:10001): deploy there and return. "
                   "Without it, a local Ray instance is started and stopped with this command.")
@click.option("--object-store-mb", type=click.IntRange(80), default=256, show_default=True,
              help="Object store of the local Ray instance (requests pass through it).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("serve_config.yaml"),
              show_default=True, help="config: the file to write.")
@debug_option
@one_line_errors
def main(action, host, port, insecure, cors_origins, address, object_store_mb, output, **values):
    """Serve InstructCV over HTTP on Ray Serve (ACTION run, the default), or write the Serve config file for the
    same service (ACTION config) to deploy with `serve deploy FILE`."""
    settings = make_settings(host, insecure, cors_origins, **values)
    if action == "config":
        write_config(output, settings, host, port)
        click.echo(f"wrote {output}: deploy it with `serve deploy {output}` on a Ray cluster "
                   f"(every node needs `pip install icv-deploy[serve]`" +
                   (f" and ${settings.api_key_env} set" if settings.require_api_key else "") + ")")
        return
    if settings.require_api_key and not os.environ.get(settings.api_key_env):
        raise IcvError(f"--host {host} is reachable from other machines: set ${settings.api_key_env} to an API key "
                       "(clients send `Authorization: Bearer <key>`), or pass --insecure to serve without one")
    if address is None:
        from ..model_files import resolve_model

        resolve_model(settings.model)  # a missing model: one line now, not a failed deployment later
        check_port_free(host, port)
    run(settings, host, port, address, object_store_mb)


def run(settings: ServeSettings, host: str, port: int, address: str | None, object_store_mb: int) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from .app import build_app

    local = address is None
    if local:  # a small local instance: no dashboard, a small object store, logical CPUs for the replicas
        # Ray starts its workers (Serve's controller, HTTP proxy, our replicas) at niceness 15; on a busy machine
        # they starve (on 2 cores beside other work the proxy missed Serve's readiness checks and the service never
        # came up). A local instance is the service: its workers run at normal priority (the raylet reads this).
        os.environ.setdefault("RAY_worker_niceness", "0")
        cpus = max(os.cpu_count() or 1, math.ceil(settings.replicas * settings.num_cpus))
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=object_store_mb * 1024 * 1024,
                 logging_level="WARNING", configure_logging=True)
    else:
        ray.init(address=address, logging_level="WARNING")
    stop = threading.Event()
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        click.echo(f"icv-serve: loading {settings.model or 'the default model'} in {settings.replicas} replica(s)...",
                   err=True)
        serve.run(build_app(settings.to_args()), name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"icv-serve: serving on http://{shown}:{port}/ (POST /v1/infer, GET /readyz, /metrics)", err=True)
        if not local:
            click.echo(f"icv-serve: deployed as application {APP_NAME!r}; `serve status` shows it, "
                       f"`serve shutdown` stops it", err=True)
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        click.echo("icv-serve: stopping", err=True)
    except RuntimeError as exc:  # the application failed to deploy (serve.run says why, at length)
        raise IcvError(f"the service did not start: {' '.join(str(exc).split())[:600]}") from None
    finally:
        if local:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise IcvError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve_config(settings: ServeSettings, host: str, port: int) -> dict:
    """A Ray Serve config file (ServeDeploySchema) for the application `icv-serve` would run."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": settings.to_args()}],
    }


def write_config(path: Path, settings: ServeSettings, host: str, port: int) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from .. import atomic

    config = serve_config(settings, host, port)
    validate = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    validate(config)
    header = ("# Ray Serve config for icv-serve (written by `icv-serve config`). Deploy: serve deploy THIS_FILE\n"
              "# `args` are icv-serve's settings (icv_deploy/serve/settings.py): replicas, num_gpus per replica,\n"
              "# max_batch_size, ... The API key is never written here: set $" + settings.api_key_env +
              " on the nodes.\n")
    atomic.write_text(path, header + yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())

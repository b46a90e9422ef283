"""The Ray Serve application: an HTTP gateway (FastAPI ingress) in front of a batching model deployment.

    client --HTTP--> Ray Serve proxy --> Gateway            one replica, no CPU reserved: API key, limits and the
                                                            form are checked here (4xx), errors become JSON
                                     --> InstructCVModel    N replicas (num_cpus / num_gpus each): @serve.batch
                                                            takes the requests that waited while the last batch ran;
                                                            `run_pairs` runs those sharing settings and working size
                                                            as one UNet batch

The model queue is bounded (max_queued_requests): a full queue, a request past its timeout or a replica that died
mid-request is answered 503 with Retry-After, never a hang. `build_app` is the import path a Serve config file
names (`icv-serve config` writes one); `icv-serve` calls it too.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import time
from importlib import resources

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import IcvError
from .form import ApiError, Job, decode_image, job_from_form, parse_form, read_body, status_of
from .metrics import Metrics
from .settings import GATEWAY_DEPLOYMENT, MODEL_DEPLOYMENT, ServeSettings

log = logging.getLogger("icv_deploy.serve")

# A replica that died or left mid-request: the gateway retries once, then answers 503.
REPLICA_GONE = tuple(getattr(module, name) for module, name in [
    (ray.exceptions, "RayActorError"), (ray.exceptions, "ActorUnavailableError"),
    (serve.exceptions, "ReplicaUnavailableError"), (serve.exceptions, "DeploymentUnavailableError"),
] if hasattr(module, name))


class InstructCVModel:
    """One model replica: the pipeline in memory and Ray Serve's batch queue in front of it."""

    def __init__(self, settings: dict):
        import torch

        from ..pipeline import load

        self.settings = ServeSettings.from_args(settings)
        torch.set_num_threads(self.settings.torch_threads)
        s = self.settings
        # OpenVINO keeps its own thread pool: the replica's CPUs are its inference threads too.
        options = {"threads": s.torch_threads} if s.engine == "openvino" else {}
        self.pipe = load(s.model, engine=s.engine, device=s.device, dtype=s.dtype, vae=s.vae, **options)
        self.pipe.progress = False
        self.reconfigure(s.batching())

    def reconfigure(self, batching: dict) -> None:
        """The deployment's user_config: batch size and wait, which `serve deploy` can change without a restart."""
        self.infer.set_max_batch_size(int(batching["max_batch_size"]))
        self.infer.set_batch_wait_timeout_s(float(batching["batch_wait_ms"]) / 1000.0)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def infer(self, jobs: list[Job]) -> list[dict]:
        # The model runs in a worker thread so that this replica's event loop keeps queueing the next batch and
        # answering Serve's health checks while a long batch runs.
        return await asyncio.to_thread(self.run_batch, jobs)

    def run_batch(self, jobs: list[Job]) -> list[dict]:
        """Jobs with the same settings run together (one `run_pairs` call); one reply per job, in order."""
        start = time.perf_counter()
        replies: list = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.batch_key(), []).append(i)
        for members in groups.values():
            for i, reply in zip(members, self._run_group([jobs[i] for i in members])):
                replies[i] = reply
        inference_ms = round((time.perf_counter() - start) * 1000.0, 2)
        for reply in replies:
            reply.update(batch_requests=len(jobs), inference_ms=inference_ms)
        return replies

    def _run_group(self, jobs: list[Job]) -> list[dict]:
        try:
            return self._run_pairs(jobs)
        except (IcvError, ApiError) as exc:  # bad input the gateway could not see: it must not fail the other jobs
            if len(jobs) > 1:
                return [reply for job in jobs for reply in self._run_group([job])]
            status = exc.status if isinstance(exc, ApiError) else status_of(exc)
            return [{"error": " ".join(str(exc).split()), "status": status}]

    def _run_pairs(self, jobs: list[Job]) -> list[dict]:
        pairs, seeds, tasks, owner = [], [], [], []
        for n, job in enumerate(jobs):
            image = decode_image(job.image, self.settings.max_pixels)
            for text in job.instructions:
                pairs.append((image, text))
                seeds.append(job.seed)
                tasks.append(job.task)
                owner.append(n)
        first = jobs[0]  # the batch key: steps, sampler and resolution are the same for every job here
        results = self.pipe.run_pairs(pairs, steps=first.steps, sampler=first.sampler, seed=seeds,
                                      resolution=first.resolution, task=tasks)
        replies = [{"results": []} for _ in jobs]
        for n, res in zip(owner, results):
            replies[n]["results"].append(_result_json(res, jobs[n].pictures))
        return replies


def _result_json(res, pictures: bool) -> dict:
    """result.json's fields, and with `pictures` the overlay, the painted visual and the mask as base64 PNG."""
    from ..result import png_bytes

    out = res.to_json()
    if pictures:
        images = {"overlay": res.overlay(), "visual": res.visual}
        if res.mask is not None:
            images["mask"] = res.mask.astype("uint8") * 255
        out["pictures"] = {name: base64.b64encode(png_bytes(array)).decode("ascii") for name, array in images.items()}
    return out


class Gateway:
    """The HTTP side: checks, errors as JSON, the page, health and metrics. Holds no model."""

    def __init__(self, model, settings: dict):
        self.model = model
        self.settings = ServeSettings.from_args(settings)
        self.api_key = os.environ.get(self.settings.api_key_env) or None
        if self.settings.require_api_key and not self.api_key:
            raise RuntimeError(f"${self.settings.api_key_env} is not set: this service requires an API key")
        self.metrics = Metrics()
        self.static = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in STATIC_TYPES}
        self._readiness = (float("-inf"), False, 0)

    # -- POST /v1/infer ------------------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        start = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()
        try:
            self._check_key(request)
            body = await read_body(request, self.settings.max_body_bytes)
            form = await parse_form(request, body, self.settings)
            job = job_from_form(form, self.settings)
            job.image = await form["image"].read()
            height, width = (await asyncio.to_thread(decode_image, job.image, self.settings.max_pixels)).shape[:2]
            sent = time.perf_counter()
            reply = await self._run(job)
            if "error" in reply:
                raise ApiError(reply["status"], reply["error"])
            waited_s = time.perf_counter() - sent - reply["inference_ms"] / 1000.0
            self.metrics.ran(waited_s, reply["inference_ms"] / 1000.0, reply["batch_requests"])
            status = 200
            timings = {"queue": round(waited_s * 1000.0, 2), "inference": reply["inference_ms"],
                       "total": round((time.perf_counter() - start) * 1000.0, 2)}
            return JSONResponse({"results": reply["results"], "batch_size": reply["batch_requests"],
                                 "image_size": [width, height], "timings_ms": timings})
        except ApiError as exc:
            status = exc.status
            return error_response(exc.status, exc.message, exc.headers)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.answered(status, time.perf_counter() - start)

    async def _run(self, job: Job) -> dict:
        """The model's reply within the request's timeout; 503 + Retry-After when it cannot come."""
        timeout = self.settings.timeout_s
        deadline = time.monotonic() + timeout
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        for attempt in (1, 2):
            response = self.model.infer.remote(job)
            try:
                return await asyncio.wait_for(response, max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                response.cancel()  # leaves the queue, or its batch if it has not started
                raise ApiError(503, f"no answer within the {timeout:g} s timeout: the service is busy", retry) from None
            except BackPressureError:
                raise ApiError(503, "the queue is full: the service is busy", retry) from None
            except REPLICA_GONE as exc:
                log.warning("model replica lost during a request (attempt %d): %s", attempt, type(exc).__name__)
                if attempt == 2 or time.monotonic() >= deadline:
                    raise ApiError(503, "the model replica stopped while running this request", retry) from None
            except IcvError as exc:  # bad input found in the replica: Ray's error keeps the cause's type
                cause = getattr(exc, "cause", None) or exc
                raise ApiError(status_of(cause), " ".join(str(cause).split())) from None
        raise AssertionError("unreachable")

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})

    # -- health, metrics, page ---------------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        """Ready when at least one model replica has its model loaded (Serve's RUNNING state)."""
        checked, ready, replicas = self._readiness
        if time.monotonic() - checked > 1.0:
            try:
                replicas = await asyncio.to_thread(running_model_replicas)
            except Exception as exc:  # the controller is restarting: not ready, and say why
                log.warning("readiness check failed: %s", exc)
                replicas = 0
            ready = replicas > 0
            self._readiness = (time.monotonic(), ready, replicas)
        body = {"ready": ready, "model_replicas": replicas}
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers={} if ready else {"Retry-After": str(self.settings.retry_after_s)})

    async def metrics_text(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        return Response(self.metrics.render(), media_type=Metrics.content_type)

    async def page(self, request: Request) -> Response:
        return self._static("index.html")

    async def script(self, request: Request) -> Response:
        return self._static("app.js")

    async def stylesheet(self, request: Request) -> Response:
        return self._static("style.css")

    def _static(self, name: str) -> Response:
        return Response(self.static[name], media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)


STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and runs no inline script.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# (method, path, Gateway method): each takes the request.
ROUTES = [("POST", "/v1/infer", "infer"), ("GET", "/healthz", "healthz"), ("GET", "/readyz", "readyz"),
          ("GET", "/metrics", "metrics_text"), ("GET", "/", "page"), ("GET", "/app.js", "script"),
          ("GET", "/style.css", "stylesheet")]


def running_model_replicas() -> int:
    app = serve.status().applications.get(serve.get_replica_context().app_name)
    deployment = app.deployments.get(MODEL_DEPLOYMENT) if app else None
    states = deployment.replica_states if deployment else {}
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or {})


def make_api(settings: ServeSettings) -> FastAPI:
    """The FastAPI app of one gateway: our routes, JSON errors for everything, CORS only when origins are given.
    Built inside the gateway replica (see build_app); each route calls that replica's Gateway object."""
    api = FastAPI(title="icv-serve", docs_url=None, redoc_url=None, openapi_url=None)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])

    async def http_error(request, exc: StarletteHTTPException):  # 404, 405, a malformed request
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(request, exc: RequestValidationError):
        return error_response(400, f"bad request: {exc.errors()[:1]}")

    async def internal_error(request, exc: Exception):
        log.exception("internal error", exc_info=exc)
        return error_response(500, "internal error (see the server log)")

    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(Exception, internal_error)
    for method, path, name in ROUTES:
        api.add_api_route(path, _endpoint(name), methods=[method], include_in_schema=False)
    return api


def _endpoint(name: str):
    async def endpoint(request: Request) -> Response:
        return await getattr(serve.get_replica_context().servable_object, name)(request)

    endpoint.__name__ = name
    return endpoint


def build_app(args: dict) -> serve.Application:
    """The application: `icv_deploy.serve.app:build_app` with ServeSettings as `args` (see `icv-serve config`)."""
    settings = ServeSettings.from_args(args)
    model = serve.deployment(name=MODEL_DEPLOYMENT, **settings.model_deployment_options())(InstructCVModel)

    def build_api() -> FastAPI:  # run by Serve inside the gateway replica, after Gateway.__init__
        return make_api(settings)

    gateway = serve.deployment(name=GATEWAY_DEPLOYMENT, **settings.gateway_deployment_options())(
        serve.ingress(build_api)(Gateway))
    return gateway.bind(model.bind(settings.to_args()), settings.to_args())

"""Every option of the service in one checked record.

The CLI builds it from flags, a Serve config file carries it as the application's `args`, and both deployments
receive it as a plain dict; `ServeSettings.from_args` checks it in each place, so a bad config file fails with
one line naming the option, not deep inside a replica.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field

from ..backends import ENGINES
from ..errors import IcvError

APP_NAME = "icv"
MODEL_DEPLOYMENT = "InstructCVModel"
GATEWAY_DEPLOYMENT = "Gateway"
API_KEY_ENV = "ICV_API_KEY"


@dataclass
class ServeSettings:
    # The model, as icv-infer takes it (None: $ICV_MODEL, else the bundled demo model).
    model: str | None = None
    engine: str = "torch"
    device: str = "cpu"
    dtype: str | None = None
    vae: str | None = None
    # Scaling and batching. A replica holds at most max_batch_size requests (the batch it runs); up to max_queue
    # more wait for a free replica, and the rest are refused at once with 503 + Retry-After.
    replicas: int = 1
    max_batch_size: int = 8
    batch_wait_ms: float = 50.0
    max_queue: int = 32
    timeout_s: float = 60.0  # per request: queue wait plus inference, then 503
    retry_after_s: int = 2
    num_cpus: float = 1.0  # Ray resources per model replica
    num_gpus: float | None = None  # None: 1 on CUDA, else 0
    threads: int | None = None  # torch CPU threads per replica (None: num_cpus, at least 1)
    # Limits on what a request may ask.
    max_body_mb: float = 16.0
    max_pixels: int = 16_000_000
    max_instructions: int = 8
    max_instruction_chars: int = 300
    max_steps: int = 100
    max_resolution: int = 1024
    # Access.
    require_api_key: bool = False  # refuse to start without the key (set for a non-loopback host without --insecure)
    api_key_env: str = API_KEY_ENV
    cors_origins: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: dict | None) -> "ServeSettings":
        """Settings from a dict (a Serve config file's `args`): unknown names and bad values are refused."""
        args = dict(args or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise IcvError(f"unknown serve setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        settings = cls(**args)
        settings.check()
        return settings

    def to_args(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise IcvError(message)

        need(self.engine in ENGINES, f"engine {self.engine!r}: choose {', '.join(ENGINES)}")
        for name in ("replicas", "max_batch_size", "max_queue", "max_instructions", "max_instruction_chars",
                     "max_steps", "max_resolution", "max_pixels", "retry_after_s"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= (0 if name == "max_queue" else 1),
                 f"{name} must be a whole number >= {0 if name == 'max_queue' else 1}, not {getattr(self, name)!r}")
        for name in ("batch_wait_ms", "timeout_s", "max_body_mb", "num_cpus"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 f"{name} must be a number >= 0, not {value!r}")
        need(self.timeout_s > 0 and self.max_body_mb > 0, "timeout_s and max_body_mb must be above 0")
        need(self.num_gpus is None or self.num_gpus >= 0, f"num_gpus must be >= 0, not {self.num_gpus!r}")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1, not {self.threads!r}")
        need(bool(self.api_key_env), "api_key_env must name an environment variable")
        need(all(isinstance(o, str) and o for o in self.cors_origins), "cors_origins must be a list of origins")

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def gpus_per_replica(self) -> float:
        return (1.0 if self.device.startswith("cuda") else 0.0) if self.num_gpus is None else float(self.num_gpus)

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, int(self.num_cpus))

    def model_deployment_options(self) -> dict:
        """Ray Serve options of the model deployment. A replica takes one batch at a time (max_ongoing_requests =
        max_batch_size), so under load the next batch is whatever waited while the last one ran."""
        return {
            "num_replicas": self.replicas,
            "max_ongoing_requests": self.max_batch_size,
            "max_queued_requests": self.max_queue,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.gpus_per_replica},
            "user_config": self.batching(),
        }

    def batching(self) -> dict:
        """What `serve deploy` may change without restarting replicas (the deployment's user_config)."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_ms": self.batch_wait_ms}

    def gateway_deployment_options(self) -> dict:
        """The HTTP gateway is light (async, no model): it takes every request and answers the ones the model
        queue refuses with a JSON 503 itself, so its own limit sits well above the model's."""
        capacity = self.replicas * self.max_batch_size + self.max_queue
        return {"num_replicas": 1, "max_ongoing_requests": max(256, 4 * capacity), "ray_actor_options": {"num_cpus": 0}}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

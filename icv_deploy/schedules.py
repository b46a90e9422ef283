"""Noise schedules: the training betas of the model's scheduler config -> sigmas and UNet timesteps.

A schedule is two arrays: `sigmas` (N + 1 values, the last 0) and `timesteps` (N values, what the UNet is
called with at each sigma). They follow diffusers' `EulerAncestralDiscreteScheduler.set_timesteps` number for
number, so a sampler run here matches diffusers' pipeline. Spacing matters for few steps (docs/DESIGN.md 5):
"leading" starts near t = 0 on pure noise for 1 step; "trailing" starts at t = 999.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPACINGS = ("linspace", "leading", "trailing", "karras")


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [N + 1] float32, decreasing, sigmas[-1] == 0
    timesteps: torch.Tensor  # [N] float32, the UNet's t for sigmas[:-1]

    def __len__(self) -> int:
        return len(self.timesteps)


def training_alphas_cumprod(config: dict) -> torch.Tensor:
    """alpha-bar_t for t = 0..T-1 from a diffusers scheduler config (computed as diffusers does, in float32)."""
    T = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.00085), config.get("beta_end", 0.012)
    kind = config.get("beta_schedule", "scaled_linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def training_sigmas(config: dict) -> np.ndarray:
    ac = training_alphas_cumprod(config)
    return np.array(((1 - ac) / ac) ** 0.5)


def sigma_to_t(sigma: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma: linear interpolation in log sigma."""
    log_sigmas = np.log(train_sigmas)
    return np.interp(np.log(np.maximum(sigma, 1e-10)), log_sigmas, np.arange(len(train_sigmas)))


def make_schedule(config: dict, steps: int, spacing: str | None = None, rho: float = 7.0) -> Schedule:
    """`steps` sigmas for a model whose scheduler config is `config` (scheduler/scheduler_config.json)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = config.get("num_train_timesteps", 1000)
    spacing = spacing or config.get("timestep_spacing", "linspace")
    train = training_sigmas(config)
    if spacing == "karras":
        lo, hi = train.min() ** (1 / rho), train.max() ** (1 / rho)
        sig = (hi + np.linspace(0, 1, steps) * (lo - hi)) ** rho
        t = sigma_to_t(sig, train)
    else:
        if spacing == "linspace":
            t = np.linspace(0, T - 1, steps, dtype=np.float32)[::-1].copy()
        elif spacing == "leading":
            t = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.float32) + config.get("steps_offset", 0)
        elif spacing == "trailing":
            t = np.arange(T, 0, -T / steps).round().astype(np.float32) - 1
        else:
            raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        sig = np.interp(t, np.arange(len(train)), train)
    sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
    return Schedule(torch.from_numpy(sigmas), torch.from_numpy(np.asarray(t, dtype=np.float32)))

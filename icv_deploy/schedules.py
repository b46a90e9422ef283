"""Noise schedules: the training betas of the model's scheduler config -> sigmas and UNet timesteps.

A schedule is two arrays, `sigmas` (N + 1 values, the last 0) and `timesteps` (N values, what the UNet is
called with at each sigma), plus the scale of the starting noise. They follow diffusers'
`EulerAncestralDiscreteScheduler.set_timesteps` number for number, so a sampler run here matches diffusers'
pipeline. Spacing matters for few steps (docs/DESIGN.md 5): "leading" runs a single step at t = 1, on pure noise;
"trailing" starts at t = 999.

Spacings: linspace, leading, trailing (as diffusers' `timestep_spacing`), karras (Karras et al. 2022 sigmas, as
diffusers' `use_karras_sigmas`) and lcm (diffusers' `LCMScheduler`: N of the 50 distillation timesteps 999, 979, ...).

One deliberate deviation: diffusers' "trailing" computes `np.arange(T, 0, -T / N)`, which for some N (61, 103,
121, 122, 201, ... of 1..1000, where T / N is not exact) holds N + 1 values: the last, a rounding residue near 0,
becomes t = -1 and the sampler runs N + 1 UNet steps. Here "trailing" yields exactly N timesteps, the first N of
diffusers' (so the two agree exactly wherever diffusers yields N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPACINGS = ("linspace", "leading", "trailing", "karras", "lcm")


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [N + 1] float32, decreasing, sigmas[-1] == 0
    timesteps: torch.Tensor  # [N] float32, the UNet's t for sigmas[:-1]
    init_sigma: float  # the starting noise is N(0, init_sigma^2): diffusers' `init_noise_sigma`

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
    if config.get("rescale_betas_zero_snr"):
        betas = zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024 (Algorithm 1), as diffusers' `rescale_betas_zero_snr`: shift and scale sqrt(alpha-bar) so
    that the last timestep keeps none of the signal (pure noise) and the first is unchanged."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def training_sigmas(config: dict) -> np.ndarray:
    ac = training_alphas_cumprod(config)
    if config.get("rescale_betas_zero_snr"):
        # diffusers' Euler and DPM-Solver schedulers: close to 0 without being 0, so the first sigma is finite
        ac[-1] = 2**-24
    return np.array(((1 - ac) / ac) ** 0.5)


def sigma_to_t(sigma: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma: linear interpolation in log sigma."""
    log_sigmas = np.log(train_sigmas)
    return np.interp(np.log(np.maximum(sigma, 1e-10)), log_sigmas, np.arange(len(train_sigmas)))


def make_schedule(config: dict, steps: int, spacing: str | None = None, rho: float = 7.0) -> Schedule:
    """`steps` sigmas for a model whose scheduler config is `config` (scheduler/scheduler_config.json)."""
    T = config.get("num_train_timesteps", 1000)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the {T} training timesteps, got {steps}")
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
            # [:steps]: diffusers' arange can hold one more value, a residue that would become t = -1 (docstring)
            t = np.arange(T, 0, -T / steps).round()[:steps].astype(np.float32) - 1
        elif spacing == "lcm":
            t = lcm_timesteps(config, steps)
        else:
            raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        sig = np.interp(t, np.arange(len(train)), train)
    sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
    # diffusers starts "linspace", "trailing" (and Karras) at sigma_max, "leading" at sqrt(sigma_max^2 + 1), the
    # variance of a noised latent; LCMScheduler's unit-variance VP noise is the same sqrt(sigma_max^2 + 1) here.
    init_sigma = float(sigmas[0]) if spacing in ("linspace", "trailing", "karras") else float((sigmas[0] ** 2 + 1) ** 0.5)
    return Schedule(torch.from_numpy(sigmas), torch.from_numpy(np.asarray(t, dtype=np.float32)), init_sigma)


def lcm_timesteps(config: dict, steps: int) -> np.ndarray:
    """diffusers' LCMScheduler.set_timesteps: `steps` evenly spaced (by index) of the distillation schedule
    k - 1, 2k - 1, ..., T - 1 (k = T / original_inference_steps), from T - 1 down."""
    T = config.get("num_train_timesteps", 1000)
    original = config.get("original_inference_steps", 50)
    if steps > original:
        raise ValueError(f"lcm spacing takes at most original_inference_steps = {original} steps, got {steps}")
    origin = (np.arange(1, original + 1) * (T // original) - 1)[::-1]
    return origin[np.floor(np.linspace(0, original, steps, endpoint=False)).astype(np.int64)].astype(np.float32)

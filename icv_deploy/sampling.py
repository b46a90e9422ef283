"""Samplers, in the manner of k-diffusion's `sampling.py`.

Each sampler is a short function over a denoiser and a sigma schedule. The denoiser `model(x, i)` returns the
denoised estimate x0 for the state `x` at schedule index `i` (it knows the backend, the guidance and the
timestep of sigmas[i]; the sampler knows only sigmas). `x` lives in k-diffusion's variance-exploding form:
x = x0 + sigma * noise, so sampling starts from noise times the schedule's `init_sigma` (sigmas[0], or
sqrt(sigmas[0]^2 + 1) where diffusers starts so: schedules.py).
`noise(x)` draws standard normal noise shaped like x from the caller's generators, so a run is reproducible.
"""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split the step into a deterministic part (down to sigma_down) and fresh noise of size sigma_up."""
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback=None):
    """The paper's sampler (diffusers' EulerAncestralDiscreteScheduler): Euler step, then fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, i)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigma_down - sigmas[i])
        # diffusers draws noise on every step, the last (sigma_up = 0) too: keep its generator in step.
        x = x + noise(x) * sigma_up
        if callback is not None:
            callback(i)
    return x


def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler = None, callback=None):
    """Deterministic Euler (Karras et al. 2022, Algorithm 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, i)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i)
    return x


def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler = None, callback=None):
    """DPM-Solver++(2M): second order multistep, one model call per step; good at 10-25 steps."""
    def t_of(sigma):
        return -sigma.log()

    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, i)
        h = t_of(sigmas[i + 1]) - t_of(sigmas[i]) if sigmas[i + 1] > 0 else None
        if h is None:
            x = denoised  # the last step lands on sigma = 0
        elif old_denoised is None:
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised
        else:
            r = (t_of(sigmas[i]) - t_of(sigmas[i - 1])) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
        if callback is not None:
            callback(i)
    return x


def lcm_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """LCM's boundary-condition scalings (c_skip, c_out) per discrete timestep, as diffusers' LCMScheduler computes
    them: the consistency function is c_skip * x_t + c_out * x0_pred (x_t in the UNet's VP form), so that it is the
    identity at t = 0. Applied by the denoiser (guidance.GuidedDenoiser's `consistency`), not here."""
    scaled = timesteps.double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.float(), c_out.float()


def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback=None):
    """Latent Consistency Model multistep sampling (diffusers' LCMScheduler): jump to the consistency model's
    estimate, re-noise it to the next sigma with fresh noise, repeat; no noise after the last step.

    `model` must apply LCM's boundary condition (lcm_scalings). One step is one model call at sigmas[0]: use a
    spacing that starts at t = 999 ("lcm", the default, or "trailing").
    """
    for i in range(len(sigmas) - 1):
        x = model(x, i)
        if sigmas[i + 1] > 0:
            x = x + noise(x) * sigmas[i + 1]
        if callback is not None:
            callback(i)
    return x


# name -> (function, default timestep spacing; None keeps the model's scheduler config). A `spacing` given to the
# pipeline overrides the default; dpmpp_2m_trailing is dpmpp_2m with spacing "trailing", kept for existing scripts.
SAMPLERS = {
    "euler_a": (sample_euler_ancestral, None),
    "euler": (sample_euler, None),
    "dpmpp_2m": (sample_dpmpp_2m, "karras"),
    "dpmpp_2m_trailing": (sample_dpmpp_2m, "trailing"),
    "lcm": (sample_lcm, "lcm"),
}
CONSISTENCY_SAMPLERS = ("lcm",)  # their denoiser applies LCM's boundary condition (lcm_scalings)

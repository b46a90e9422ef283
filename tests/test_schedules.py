"""Schedules match diffusers' schedulers number for number; samplers behave as their maths says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icv_deploy.sampling import SAMPLERS, ancestral_step
from icv_deploy.schedules import make_schedule, sigma_to_t, training_sigmas
from icv_deploy.testing import SCHEDULER_CONFIG


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 10, 100])
def test_schedule_matches_diffusers_euler_ancestral(spacing, steps):
    from diffusers import EulerAncestralDiscreteScheduler

    ref = EulerAncestralDiscreteScheduler(**{**SCHEDULER_CONFIG, "timestep_spacing": spacing})
    ref.set_timesteps(steps)
    ours = make_schedule(SCHEDULER_CONFIG, steps, spacing)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas.numpy(), rtol=1e-6)


def test_trailing_starts_at_999_and_leading_does_not():
    assert make_schedule(SCHEDULER_CONFIG, 1, "trailing").timesteps.tolist() == [999.0]
    assert make_schedule(SCHEDULER_CONFIG, 1, "leading").timesteps[0] < 10


def test_karras_schedule_matches_diffusers_sigmas():
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()}, use_karras_sigmas=True)
    ref.set_timesteps(10)
    ours = make_schedule(SCHEDULER_CONFIG, 10, "karras")
    np.testing.assert_allclose(ours.sigmas[:-1].numpy(), ref.sigmas[:-1].numpy(), rtol=1e-5)
    # diffusers rounds the Karras timesteps to integers; ours keep the exact fractional value
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps.numpy(), atol=0.5)


def test_sigma_to_t_inverts_the_training_table():
    train = training_sigmas(SCHEDULER_CONFIG)
    t = np.array([0, 17, 500, 999])
    np.testing.assert_allclose(sigma_to_t(train[t], train), t, atol=1e-6)


def test_ancestral_step_preserves_variance():
    s_from, s_to = torch.tensor(5.0), torch.tensor(2.0)
    down, up = ancestral_step(s_from, s_to)
    assert torch.isclose(down**2 + up**2, s_to**2)
    assert ancestral_step(s_from, torch.tensor(0.0))[1] == 0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_recover_x0_with_an_exact_denoiser(name):
    """With a denoiser that always returns the true x0, every sampler ends at x0."""
    sample_fn, spacing = SAMPLERS[name]
    schedule = make_schedule(SCHEDULER_CONFIG, 6, spacing)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x = x0 + torch.randn(x0.shape, generator=gen) * schedule.sigmas[0]
    calls = []

    def model(x, i):
        calls.append(i)
        return x0

    out = sample_fn(model, x, schedule.sigmas, lambda x: torch.randn(x.shape, generator=gen))
    assert calls == list(range(6))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)

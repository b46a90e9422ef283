"""Schedules match diffusers' schedulers number for number; samplers behave as their maths says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icv_deploy.sampling import SAMPLERS
from icv_deploy.schedules import make_schedule, sigma_to_t, training_sigmas
from icv_deploy.testing import SCHEDULER_CONFIG


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 50, 100])
def test_schedule_matches_diffusers_euler_ancestral(spacing, steps):
    from diffusers import EulerAncestralDiscreteScheduler

    ref = EulerAncestralDiscreteScheduler(**{**SCHEDULER_CONFIG, "timestep_spacing": spacing})
    ref.set_timesteps(steps)
    ours = make_schedule(SCHEDULER_CONFIG, steps, spacing)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas.numpy(), rtol=1e-6)
    assert ours.init_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)


def test_trailing_yields_exactly_n_steps_where_diffusers_adds_a_t_of_minus_one():
    """diffusers' trailing spacing holds N + 1 timesteps for some N, the last t = -1 (schedules.py docstring);
    ours holds exactly N for every N, and equals diffusers' first N (all of them where diffusers is right)."""
    from diffusers import EulerAncestralDiscreteScheduler

    ref = EulerAncestralDiscreteScheduler(**{**SCHEDULER_CONFIG, "timestep_spacing": "trailing"})
    extra = []
    for n in range(1, 1001):
        ref.set_timesteps(n)
        ours = make_schedule(SCHEDULER_CONFIG, n, "trailing")
        assert len(ours) == n and len(ours.sigmas) == n + 1 and ours.timesteps[0] == 999 and ours.timesteps[-1] >= 0
        assert torch.all(ours.timesteps[1:] < ours.timesteps[:-1])
        np.testing.assert_array_equal(ours.timesteps.numpy(), ref.timesteps[:n].numpy())
        np.testing.assert_allclose(ours.sigmas[:n].numpy(), ref.sigmas[:n].numpy(), rtol=1e-6)
        if len(ref.timesteps) == n + 1:
            assert ref.timesteps[-1] == -1
            extra.append(n)
        else:
            assert len(ref.timesteps) == n
    assert extra[:4] == [61, 103, 121, 122]  # the cases the docstring names; if diffusers fixes this, update it


def test_trailing_starts_at_999_and_leading_does_not():
    assert make_schedule(SCHEDULER_CONFIG, 1, "trailing").timesteps.tolist() == [999.0]
    assert make_schedule(SCHEDULER_CONFIG, 1, "leading").timesteps[0] < 10


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_lcm_spacing_matches_diffusers_lcm_scheduler(steps):
    from diffusers import LCMScheduler

    ref = LCMScheduler(**SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    ours = make_schedule(SCHEDULER_CONFIG, steps, "lcm")
    np.testing.assert_array_equal(ours.timesteps.numpy(), ref.timesteps.numpy().astype(np.float32))
    ac = ref.alphas_cumprod[ref.timesteps]
    np.testing.assert_allclose(ours.sigmas[:-1].numpy(), ((1 - ac) / ac).sqrt().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="at most"):
        make_schedule(SCHEDULER_CONFIG, 51, "lcm")


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


# ---- step by step against diffusers' schedulers, on the same model outputs ----------------------------------------
def fake_unet(x_vp: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for the UNet whose output depends on its input and timestep."""
    return torch.tanh(0.8 * x_vp + 0.3 * x_vp.flip(-1)) + 0.05 * (float(t) / 1000.0)


def run_diffusers(scheduler, steps, shape, seed):
    """diffusers' loop: the states the UNet sees before each step, and the result (VE form, like ours)."""
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=gen) * scheduler.init_noise_sigma
    states = []
    for t in scheduler.timesteps:
        states.append(x)
        out = fake_unet(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=gen).prev_sample
    return states, x, scheduler


def run_ours(sampler, spacing, config, steps, shape, seed):
    from icv_deploy.guidance import GuidedDenoiser
    from icv_deploy.sampling import CONSISTENCY_SAMPLERS, lcm_scalings

    sample_fn, default_spacing = SAMPLERS[sampler]
    schedule = make_schedule(config, steps, spacing or default_spacing)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * schedule.init_sigma
    consistency = lcm_scalings(schedule.timesteps) if sampler in CONSISTENCY_SAMPLERS else None
    calls = []

    def predict(sample, t, text_emb):  # guidance scales 1 and 1 reduce the guided output to the first rows'
        calls.append(sample.shape[0])
        return fake_unet(sample[:, :4], t[0])

    emb, image = torch.zeros(shape[0] * 3, 1, 1), torch.zeros(shape[0] * 3, 4, *shape[2:])
    denoiser = GuidedDenoiser(predict, schedule, emb, image, 1.0, 1.0, config["prediction_type"], consistency)
    states = []

    def model(x, i):
        states.append(x)
        return denoiser(x, i)

    out = sample_fn(model, x, schedule.sigmas, lambda x: torch.randn(x.shape, generator=gen))
    return states, out, schedule, calls


@pytest.mark.parametrize("steps", [1, 4, 10])
@pytest.mark.parametrize("sampler, scheduler_name, spacing, prediction_type", [
    ("euler_a", "EulerAncestralDiscreteScheduler", "linspace", "epsilon"),
    ("euler_a", "EulerAncestralDiscreteScheduler", "leading", "epsilon"),
    ("euler_a", "EulerAncestralDiscreteScheduler", "trailing", "v_prediction"),
    ("euler", "EulerDiscreteScheduler", "linspace", "v_prediction"),
    ("euler", "EulerDiscreteScheduler", "trailing", "sample"),
    ("euler", "EulerDiscreteScheduler", "leading", "epsilon"),
    ("lcm", "LCMScheduler", "lcm", "epsilon"),
    ("lcm", "LCMScheduler", "lcm", "v_prediction"),
    ("lcm", "LCMScheduler", "lcm", "sample"),
])
def test_samplers_match_diffusers_step_by_step(sampler, scheduler_name, spacing, prediction_type, steps):
    """The same model outputs through our sampler + denoiser and through diffusers' scheduler give the same
    state before every step and the same result: schedule, starting noise, prediction type, noise draws and
    (lcm) the boundary-condition scalings c_skip / c_out."""
    import diffusers

    config = {**SCHEDULER_CONFIG, "timestep_spacing": spacing if spacing != "lcm" else "linspace",
              "prediction_type": prediction_type}
    ref_states, ref_out, ref = run_diffusers(getattr(diffusers, scheduler_name)(**config), steps, (2, 4, 6, 6), 0)
    states, out, schedule, calls = run_ours(sampler, spacing, config, steps, (2, 4, 6, 6), 0)
    assert len(states) == len(ref_states) == steps and calls == [6] * steps
    for i, (ours_x, ref_x) in enumerate(zip(states, ref_states)):
        if sampler == "lcm":  # LCMScheduler keeps the VP form x / sqrt(sigma^2 + 1); we keep the VE form
            ours_x = ours_x / (schedule.sigmas[i] ** 2 + 1) ** 0.5
        torch.testing.assert_close(ours_x, ref_x, rtol=1e-4, atol=1e-4, msg=f"state before step {i}")
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)


def test_lcm_scalings_are_diffusers_boundary_conditions():
    from diffusers import LCMScheduler

    from icv_deploy.sampling import lcm_scalings

    ref = LCMScheduler(**SCHEDULER_CONFIG)
    t = torch.tensor([999.0, 499.0, 19.0, 0.0])
    c_skip, c_out = lcm_scalings(t)
    for i, ti in enumerate(t.tolist()):
        want = ref.get_scalings_for_boundary_condition_discrete(ti)
        assert (c_skip[i].item(), c_out[i].item()) == (pytest.approx(want[0], rel=1e-6), pytest.approx(want[1], rel=1e-6))
    assert c_skip[-1] == 1 and c_out[-1] == 0  # the identity at t = 0: the boundary condition


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_recover_x0_from_their_own_targets(prediction_type):
    """Each parameterisation's training target, converted back, gives the clean latent at any sigma."""
    from icv_deploy.guidance import denoised_from_output

    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 4, 5, 5, generator=gen)
    for sigma in (0.03, 1.0, 14.6):
        alpha, sigma_vp = 1 / (sigma**2 + 1) ** 0.5, sigma / (sigma**2 + 1) ** 0.5
        target = {"epsilon": eps, "v_prediction": alpha * eps - sigma_vp * x0, "sample": x0}[prediction_type]
        torch.testing.assert_close(denoised_from_output(target, x0 + sigma * eps, sigma, prediction_type), x0,
                                   rtol=1e-4, atol=1e-4)

"""The torch backend reproduces diffusers' StableDiffusionInstructPix2PixPipeline (docs/DESIGN.md 4)."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

import icv_deploy


def diffusers_visual(model_dir, image, instruction, steps, seed, scheduler=None, gs=7.5, igs=1.5, **scheduler_options):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(model_dir, safety_checker=None)
    if scheduler is not None or scheduler_options:
        scheduler = scheduler or type(ref.scheduler)
        extra = {"use_karras_sigmas": True} if "DPM" in scheduler.__name__ else {}
        ref.scheduler = scheduler.from_config(ref.scheduler.config, **extra, **scheduler_options)
    ref.set_progress_bar_config(disable=True)
    out = ref(instruction, image=Image.fromarray(image), num_inference_steps=steps, guidance_scale=gs,
              image_guidance_scale=igs, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return out * 255.0


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_model_f4"])
def test_euler_a_matches_diffusers(request, model_fixture, scene_image):
    model_dir = request.getfixturevalue(model_fixture)
    pipe = icv_deploy.load(model_dir)
    pipe.progress = False
    # resolution=None keeps the (already multiple-of-f) size, so both pipelines see the same pixels
    res = pipe(scene_image, "Segment the red box", steps=12, sampler="euler_a", seed=3, resolution=None)
    ref = diffusers_visual(model_dir, scene_image, "Segment the red box", steps=12, seed=3)
    assert res.visual.shape == ref.shape == scene_image.shape
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0
    assert res.visual.std() > 5  # a real picture, not a constant


def test_guidance_scales_are_passed_through(tiny_model, scene_image):
    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    res = pipe(scene_image, "Detect the box", steps=6, seed=1, guidance_scale=3.0, image_guidance_scale=2.5, resolution=None)
    ref = diffusers_visual(tiny_model, scene_image, "Detect the box", steps=6, seed=1, gs=3.0, igs=2.5)
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0
    other = pipe(scene_image, "Detect the box", steps=6, seed=1, resolution=None)
    assert np.abs(other.visual.astype(np.float64) - ref).max() > 2.0  # the scales matter


def test_unit_scales_run_only_the_text_image_rows_and_match_diffusers(tiny_model, scene_image, monkeypatch):
    """With both scales 1 the guided combination is the text + image prediction: one row per instruction per step
    (diffusers skips guidance then too), two instructions batched -> 2 rows."""
    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    rows, predict = [], pipe.backend.predict_noise
    monkeypatch.setattr(pipe.backend, "predict_noise", lambda sample, t, emb: (rows.append(sample.shape[0]), predict(sample, t, emb))[1])
    res = pipe(scene_image, "Segment the red box", steps=6, sampler="euler_a", seed=3, guidance_scale=1.0,
               image_guidance_scale=1.0, resolution=None)
    assert rows == [1] * 6
    ref = diffusers_visual(tiny_model, scene_image, "Segment the red box", steps=6, seed=3, gs=1.0, igs=1.0)
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0
    rows.clear()
    pipe.run_many(scene_image, ["Segment the red box", "Detect the box"], steps=3, sampler="euler_a", seed=3,
                  guidance_scale=1.0, image_guidance_scale=1.0, resolution=None)
    assert rows == [2] * 3
    guided = pipe(scene_image, "Segment the red box", steps=6, sampler="euler_a", seed=3, resolution=None)
    assert rows[-6:] == [3] * 6 and np.abs(guided.visual.astype(np.float64) - ref).max() > 2.0


def test_euler_matches_diffusers_euler_discrete(tiny_model, scene_image):
    from diffusers import EulerDiscreteScheduler

    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    res = pipe(scene_image, "Create a monocular depth map", steps=8, sampler="euler", seed=5, resolution=None)
    ref = diffusers_visual(tiny_model, scene_image, "Create a monocular depth map", steps=8, seed=5, scheduler=EulerDiscreteScheduler)
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0


def test_dpmpp_2m_close_to_diffusers_dpmsolver(tiny_model, scene_image):
    """diffusers' DPM-Solver++ 2M (Karras) rounds its timesteps to integers and starts from unit-variance VP
    noise; the math is otherwise the same, so the pictures agree closely but not bit for bit."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    res = pipe(scene_image, "Segment the sky", steps=10, sampler="dpmpp_2m", seed=2, resolution=None)
    ref = diffusers_visual(tiny_model, scene_image, "Segment the sky", steps=10, seed=2, scheduler=DPMSolverMultistepScheduler)
    diff = np.abs(res.visual.astype(np.float64) - ref)
    assert diff.mean() < 1.0 and diff.max() <= 8.0


def with_scheduler(tiny_model, tmp_path_factory, name: str, **settings):
    """A copy of the tiny model whose scheduler config has `settings` (the weights do not care; both pipelines read
    the config)."""
    import shutil

    out = tmp_path_factory.mktemp("models") / name
    shutil.copytree(tiny_model, out)
    path = out / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return out


@pytest.fixture(scope="module")
def tiny_model_v(tiny_model, tmp_path_factory):
    return with_scheduler(tiny_model, tmp_path_factory, "tiny-v", prediction_type="v_prediction")


@pytest.fixture(scope="module")
def tiny_model_zsnr(tiny_model, tmp_path_factory):
    """v prediction on a zero-terminal-SNR schedule with trailing spacing, as the demo model's scheduler config."""
    return with_scheduler(tiny_model, tmp_path_factory, "tiny-zsnr", prediction_type="v_prediction",
                          rescale_betas_zero_snr=True, timestep_spacing="trailing")


@pytest.mark.parametrize("sampler", ["euler_a", "euler"])
def test_zero_terminal_snr_matches_diffusers(tiny_model_zsnr, scene_image, sampler):
    """The schedule's last timestep is pure noise (sigma finite only by diffusers' 2**-24 floor) and the runtime
    samples it as diffusers' Euler schedulers do."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    from icv_deploy.schedules import training_alphas_cumprod

    config = json.loads((tiny_model_zsnr / "scheduler" / "scheduler_config.json").read_text())
    assert training_alphas_cumprod(config)[-1] == 0
    pipe = icv_deploy.load(tiny_model_zsnr)
    pipe.progress = False
    res = pipe(scene_image, "Segment the red box", steps=4, sampler=sampler, seed=4, resolution=None)
    scheduler = EulerAncestralDiscreteScheduler if sampler == "euler_a" else EulerDiscreteScheduler
    ref = diffusers_visual(tiny_model_zsnr, scene_image, "Segment the red box", steps=4, seed=4, scheduler=scheduler)
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0
    assert res.visual.std() > 5


@pytest.mark.parametrize("case", ["euler_a-leading", "euler_a-trailing", "euler_a-v_prediction", "lcm-1", "lcm-4"])
def test_more_samplers_match_diffusers(request, case, scene_image):
    """Leading and trailing spacing (with diffusers' starting noise), v prediction read from the scheduler config,
    and LCM with diffusers' LCMScheduler. (Where diffusers' trailing spacing adds a step at t = -1, test_schedules
    checks that ours stops at N.)"""
    from diffusers import LCMScheduler

    model_dir = request.getfixturevalue("tiny_model_v" if "v_prediction" in case else "tiny_model")
    sampler, steps, spacing, ref_kw = "euler_a", 6, None, {}
    if case == "euler_a-leading":
        spacing, ref_kw = "leading", {"timestep_spacing": "leading"}
    elif case == "euler_a-trailing":
        spacing, ref_kw = "trailing", {"timestep_spacing": "trailing"}
    elif case.startswith("lcm"):
        sampler, steps, ref_kw = "lcm", int(case.split("-")[1]), {"scheduler": LCMScheduler}
    pipe = icv_deploy.load(model_dir)
    pipe.progress = False
    calls = []
    predict = pipe.backend.predict_noise
    pipe.backend.predict_noise = lambda *a: calls.append(a[0].shape[0]) or predict(*a)
    res = pipe(scene_image, "Segment the red box", steps=steps, sampler=sampler, spacing=spacing, seed=4, resolution=None)
    ref = diffusers_visual(model_dir, scene_image, "Segment the red box", steps=steps, seed=4, **ref_kw)
    assert calls == [3] * steps  # N steps, each one UNet batch of 3 (text + image, image, neither)
    assert np.abs(res.visual.astype(np.float64) - ref).max() <= 2.0
    assert res.visual.std() > 5


def test_several_instructions_equal_single_runs(tiny_model, scene_image):
    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    texts = ["Segment the box", "Detect the box", "Create a monocular depth map"]
    batched = pipe.run_many(scene_image, texts, steps=5, seed=9, resolution=None)
    for text, res in zip(texts, batched):
        alone = pipe(scene_image, text, steps=5, seed=9, resolution=None)
        assert np.abs(res.visual.astype(int) - alone.visual.astype(int)).max() <= 1
    assert [r.task for r in batched] == ["segmentation", "detection", "depth"]


def test_resolution_resizes_long_side_to_multiple_of_scale_factor(tiny_model_f4, scene_image):
    pipe = icv_deploy.load(tiny_model_f4)
    pipe.progress = False
    res = pipe(scene_image, "Segment the box", steps=2, resolution=50)
    # 84x60 -> long side 50: 50 x 35.7 -> rounded 50 x 36 -> multiples of 4: 48 x 36 (W x H)
    assert res.visual.shape == (36, 48, 3)
    assert res.mask.shape == scene_image.shape[:2]  # answers come back at the input size

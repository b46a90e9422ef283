"""One-pass models (icv_config.json "mode": "one_pass"): one UNet call of batch K for K instructions, on every backend.

The UNet calls are counted by wrapping the backend's `predict_noise`; the result is checked against the model's own
diffusers modules called directly (UNet at t, the clean latent from diffusers' alphas_cumprod, the VAE decoder).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import icv_deploy
from icv_deploy.errors import ModelFilesError
from icv_deploy.model_files import model_config
from icv_deploy.one_pass import OnePass
from icv_deploy.testing import SCHEDULER_CONFIG

from test_trt import fake_tensorrt  # noqa: F401  (the fixture: TensorRT's builder faked, as test_trt.py uses it)

INSTRUCTIONS = ["Segment the red box", "Detect the box", "Create a monocular depth map"]


def with_one_pass(model_dir, out, **mode):
    """A copy of `model_dir` whose icv_config.json declares a one-pass mode (other keys kept)."""
    shutil.copytree(model_dir, out)
    (out / "icv_config.json").write_text(json.dumps({**model_config(model_dir), "mode": "one_pass", **mode}))
    return out


@pytest.fixture(scope="module")
def one_pass_model(tiny_model_f4, tmp_path_factory):
    return with_one_pass(tiny_model_f4, tmp_path_factory.mktemp("models") / "tiny-1pass", timestep=999,
                         noise_input="zeros", prediction_type="sample")


@pytest.fixture(scope="module")
def one_pass_v_model(tiny_model_f4, tmp_path_factory):
    return with_one_pass(tiny_model_f4, tmp_path_factory.mktemp("models") / "tiny-1pass-v", timestep=900,
                         noise_input="image_latent", prediction_type="v_prediction")


def count_unet_calls(pipe):
    """Record (sample, timestep, text_embeddings) of every UNet call the pipeline makes."""
    calls, predict = [], pipe.backend.predict_noise

    def counted(sample, timestep, text_embeddings):
        calls.append((sample.detach().cpu().clone(), torch.as_tensor(timestep).cpu().clone(), text_embeddings.detach().cpu()))
        return predict(sample, timestep, text_embeddings)

    pipe.backend.predict_noise = counted
    return calls


def reference_visuals(model_dir, image, instructions, timestep, noise_input, prediction_type):
    """The one-pass answer computed with diffusers' own modules, independently of icv_deploy's conversions."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    alpha_bar = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod[timestep]
    with torch.no_grad():
        ids = tokenizer(instructions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        emb = text_encoder(ids)[0]
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        z = vae.encode(pixels).latent_dist.mode().expand(len(instructions), -1, -1, -1)
        x_t = torch.zeros_like(z) if noise_input == "zeros" else z * vae.config.scaling_factor
        out = unet(torch.cat([x_t, z], 1), torch.full((len(instructions),), timestep), encoder_hidden_states=emb).sample
        x0 = {"sample": out, "v_prediction": alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out,
              "epsilon": (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()}[prediction_type]
        decoded = vae.decode(x0 / vae.config.scaling_factor).sample
    return ((decoded.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("fixture, timestep, noise_input, prediction_type", [
    ("one_pass_model", 999, "zeros", "sample"),
    ("one_pass_v_model", 900, "image_latent", "v_prediction"),
])
def test_one_pass_is_one_unet_call_of_batch_k(request, fixture, timestep, noise_input, prediction_type, scene_image):
    model_dir = request.getfixturevalue(fixture)
    pipe = icv_deploy.load(model_dir)
    pipe.progress = False
    assert pipe.one_pass == OnePass(timestep, noise_input, prediction_type)
    calls = count_unet_calls(pipe)
    results = pipe.run_many(scene_image, INSTRUCTIONS, seed=0, resolution=None)

    assert len(calls) == 1  # one UNet pass for all three instructions: no sampler loop, no guidance batch
    sample, t, emb = calls[0]
    assert sample.shape[0] == t.shape[0] == emb.shape[0] == len(INSTRUCTIONS)
    assert torch.all(t == timestep)
    if noise_input == "zeros":
        assert torch.count_nonzero(sample[:, :4]) == 0
    else:
        torch.testing.assert_close(sample[:, :4], sample[:, 4:] * 0.18215)
    assert not torch.equal(emb[0], emb[1])  # each row is its own instruction, not the empty prompt
    assert [r.settings["steps"] for r in results] == [1, 1, 1] and results[0].settings["sampler"] == "one_pass"

    ref = reference_visuals(model_dir, scene_image, INSTRUCTIONS, timestep, noise_input, prediction_type)
    for res, want in zip(results, ref):
        assert np.abs(res.visual.astype(np.float64) - want).max() <= 2.0
    assert [r.task for r in results] == ["segmentation", "detection", "depth"]


def test_one_pass_ignores_sampling_settings_and_says_so(one_pass_model, scene_image, caplog):
    pipe = icv_deploy.load(one_pass_model)
    pipe.progress = False
    calls = count_unet_calls(pipe)
    with caplog.at_level("WARNING", logger="icv_deploy"):
        res = pipe(scene_image, "Segment the red box", steps=20, sampler="euler", resolution=None)
    assert len(calls) == 1 and res.settings["steps"] == 1
    assert any("one step" in r.getMessage() and "steps=20" in r.getMessage() for r in caplog.records)


def test_icv_infer_steps_on_a_one_pass_model_says_it_takes_one_step(one_pass_model, tmp_path):
    from PIL import Image

    from icv_deploy.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(image)
    result = CliRunner().invoke(main, ["--model", str(one_pass_model), "--steps", "20", "--quiet", "--output",
                                       str(tmp_path / "out"), str(image), "Segment the box"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "one-pass model" in line]
    assert len(lines) == 1 and "takes one step" in lines[0] and "steps=20" in lines[0]
    assert "one-pass" not in result.stdout


@pytest.fixture(scope="module")
def one_pass_onnx(one_pass_model, tmp_path_factory):
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny-1pass"
    export_onnx(one_pass_model, out, log=lambda *_: None)
    return out


def test_one_pass_runs_on_onnx_with_the_same_unet_graph(one_pass_model, one_pass_onnx, scene_image):
    """The ONNX export of a one-pass model is the usual one (icv_config.json copied along) and runs one call."""
    onnx_dir = one_pass_onnx
    assert json.loads((onnx_dir / "icv_config.json").read_text())["mode"] == "one_pass"
    pipe = icv_deploy.load(onnx_dir, engine="onnx")
    pipe.progress = False
    calls = count_unet_calls(pipe)
    results = pipe.run_many(scene_image, INSTRUCTIONS[:2], resolution=None)
    assert len(calls) == 1 and calls[0][0].shape[0] == 2
    torch_results = icv_deploy.load(one_pass_model).run_many(scene_image, INSTRUCTIONS[:2], resolution=None)
    for a, b in zip(results, torch_results):
        assert np.abs(a.visual.astype(int) - b.visual.astype(int)).max() <= 2


def test_trt_profiles_of_a_one_pass_model_allow_batch_k():
    from icv_deploy.backends.base import ModelInfo
    from icv_deploy.export.submodels import submodels, trt_profile

    info = ModelInfo(vae_scale_factor=8, text_hidden_size=768)
    specs = submodels(info)
    unet = trt_profile(specs["unet"], info, batch=4, min_res=128, opt_res=256, max_res=512, guidance=False)
    assert unet["sample"] == ((1, 8, 16, 16), (4, 8, 32, 32), (4, 8, 64, 64))
    assert unet["timestep"] == ((1,), (4,), (4,))
    text = trt_profile(specs["text_encoder"], info, batch=4, guidance=False)
    assert text["input_ids"] == ((1, 77), (4, 77), (4, 77))
    guided = trt_profile(specs["unet"], info, batch=4, min_res=128, opt_res=256, max_res=512)
    assert guided["sample"][2][0] == 12  # the guidance batch keeps 3 rows per instruction


def test_engines_of_a_one_pass_model_take_batch_k(fake_tensorrt, one_pass_onnx, tmp_path):
    """build-engines (TensorRT faked as in test_trt.py) gives a one-pass ONNX folder's UNet and text encoder batch
    profiles of 1 .. K and carries its icv_config.json, so the trt backend runs it in one pass too."""
    from icv_deploy.export.engine import build_engines

    calls, _ = fake_tensorrt
    out = tmp_path / "engines"
    meta = build_engines(one_pass_onnx, out, batch=4, min_res=32, opt_res=64, max_res=128, log=lambda *_: None)
    assert meta["one_pass"] is True
    unet_config = next(call[1] for call in calls if str(call[0]).endswith("unet/model.onnx"))  # (onnx path, config, ...)
    assert unet_config["profiles"][0]["sample"] == ((1, 8, 8, 8), (4, 8, 16, 16), (4, 8, 32, 32))  # f = 4
    assert meta["engines"]["text_encoder"]["profile"]["input_ids"] == [[1, 77], [4, 77], [4, 77]]
    assert json.loads((out / "icv_config.json").read_text())["mode"] == "one_pass"


@pytest.mark.parametrize("config, message", [
    ({"mode": "two_pass"}, "unknown mode 'two_pass'"),
    ({"mode": "one_pass", "timestep": 1000}, "timestep 1000 is not a training timestep"),
    ({"mode": "one_pass", "noise_input": "noise"}, "unknown noise_input 'noise'"),
    ({"mode": "one_pass", "prediction_type": "x0"}, "unknown prediction_type 'x0'"),
])
def test_bad_one_pass_configs_are_refused_in_one_line(config, message):
    with pytest.raises(ModelFilesError, match=message):
        OnePass.from_config(config, SCHEDULER_CONFIG)


def test_one_pass_defaults():
    assert OnePass.from_config({}, SCHEDULER_CONFIG) is None
    assert OnePass.from_config({"mode": "sampled"}, SCHEDULER_CONFIG) is None
    mode = OnePass.from_config({"mode": "one_pass"}, SCHEDULER_CONFIG)
    assert mode == OnePass(999, "zeros", "epsilon")  # the scheduler config's prediction type
    assert OnePass.from_config(mode.to_json(), SCHEDULER_CONFIG) == mode

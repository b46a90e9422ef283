"""The optional tiny autoencoder (TAESD, `vae_tiny/`): conversions, diffusers parity, ONNX export, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import icv_deploy
from icv_deploy import images as imgs
from icv_deploy.backends import load_backend
from icv_deploy.errors import IcvError, ModelFilesError
from icv_deploy.model_files import check_tiny_vae_folder, tiny_vae_scale_factors
from icv_deploy.testing import TAESD_CONFIG, add_tiny_vae, tiny_vae_config


def load_tiny_vae(model_dir):
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(model_dir, subfolder="vae_tiny").eval()


def scaling_factor(model_dir) -> float:
    return json.loads((model_dir / "vae" / "config.json").read_text())["scaling_factor"]


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# ---- the model folder ----------------------------------------------------------------------------------------------
def test_taesd_config_is_autoencoder_tiny_defaults():
    """TAESD_CONFIG builds the architecture of madebyollin/taesd, which is AutoencoderTiny's default."""
    from diffusers import AutoencoderTiny

    with torch.device("meta"):
        ours, default = AutoencoderTiny(**TAESD_CONFIG), AutoencoderTiny()
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == \
        {k: v for k, v in default.config.items() if not k.startswith("_")}
    assert 2 ** (len(ours.config.block_out_channels) - 1) == 8
    # madebyollin/taesd's config.json leaves block_out_channels out: the check falls back to the defaults
    assert tiny_vae_scale_factors(TAESD_CONFIG) == tiny_vae_scale_factors({"_class_name": "AutoencoderTiny"}) == (8, 8)


def test_factory_writes_a_tiny_vae_that_fits_the_model(taesd_model):
    config = check_tiny_vae_folder(taesd_model)
    assert config["_class_name"] == "AutoencoderTiny"
    tiny = load_tiny_vae(taesd_model)
    with torch.no_grad():
        latents = tiny.encode(torch.zeros(1, 3, 24, 32)).latents
    assert latents.shape == (1, 4, 6, 8)  # scale factor 4, as the model's own VAE
    assert json.loads((taesd_model / "model_index.json").read_text()).get("vae_tiny") is None  # diffusers still loads it


def test_add_tiny_vae_refuses_another_latent_space(tiny_model_f4, tmp_path):
    model = shutil.copytree(tiny_model_f4, tmp_path / "m")
    with pytest.raises(ModelFilesError, match="no vae_tiny/ folder.*madebyollin/taesd") as err:
        check_tiny_vae_folder(model)
    assert one_line(str(err.value))
    add_tiny_vae(model, tiny_vae_config(vae_levels=2))  # scale factor 2 beside a VAE of scale factor 4
    with pytest.raises(ModelFilesError, match="scales images by 2.*by 4") as err:
        check_tiny_vae_folder(model)
    assert one_line(str(err.value))
    add_tiny_vae(model, {**tiny_vae_config(vae_levels=3), "latent_channels": 16})
    with pytest.raises(ModelFilesError, match="16 latent channels.*4") as err:
        load_backend(model, "torch", vae="tiny")
    assert one_line(str(err.value))
    add_tiny_vae(model)  # config None: the small config with the model's scale factor
    check_tiny_vae_folder(model)


# ---- the torch backend ---------------------------------------------------------------------------------------------
def test_torch_backend_converts_between_scaled_and_unscaled_latents(taesd_model):
    """encode_image = tiny.encode(x).latents / sf and decode_latents(z) = tiny.decode(z * sf), sf from vae/config.json."""
    backend = load_backend(taesd_model, "torch", vae="tiny")
    full = load_backend(taesd_model, "torch")
    assert backend.info == full.info and backend.info.scaling_factor == scaling_factor(taesd_model) == 0.18215
    tiny, sf = load_tiny_vae(taesd_model), scaling_factor(taesd_model)
    g = torch.Generator().manual_seed(0)
    pixels, latents = torch.rand(2, 3, 20, 28, generator=g) * 2 - 1, torch.randn(2, 4, 5, 7, generator=g)
    with torch.no_grad():
        want_latents, want_pixels = tiny.encode(pixels).latents / sf, tiny.decode(latents * sf).sample
    torch.testing.assert_close(backend.encode_image(pixels), want_latents)
    torch.testing.assert_close(backend.decode_latents(latents), want_pixels)
    assert not torch.allclose(full.encode_image(pixels), want_latents)  # the option really swaps the autoencoder
    with pytest.raises(IcvError, match="unknown vae 'small'"):
        load_backend(taesd_model, "torch", vae="small")


def test_euler_a_matches_diffusers_with_autoencoder_tiny(taesd_model, scene_image):
    """diffusers' InstructPix2Pix pipeline with vae=AutoencoderTiny, fed the image as precomputed (correctly
    unscaled) latents: diffusers' own encode path would take TAESD's scaled latents as they are (off by sf), while
    its decode path, latents / vae.config.scaling_factor (1.0) into TAESD's decoder, is right for TAESD."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = icv_deploy.load(taesd_model, vae="tiny")
    pipe.progress = False
    res = pipe(scene_image, "Segment the red box", steps=8, sampler="euler_a", seed=3, resolution=None)

    tiny = load_tiny_vae(taesd_model)
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(taesd_model, vae=tiny, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image_latents = tiny.encode(imgs.to_tensor(scene_image)).latents / scaling_factor(taesd_model)
    out = ref("Segment the red box", image=image_latents, num_inference_steps=8, guidance_scale=7.5,
              image_guidance_scale=1.5, generator=torch.Generator().manual_seed(3), output_type="np").images[0] * 255.0
    assert res.visual.shape == out.shape == scene_image.shape
    assert np.abs(res.visual.astype(np.float64) - out).max() <= 2.0
    assert res.visual.std() > 5  # a real picture, not a constant


# ---- ONNX export ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_export_with_tiny_vae_matches_torch(onnx_taesd, taesd_model, scene_image):
    manifest = json.loads((onnx_taesd / "manifest.json").read_text())
    assert manifest["vae"] == "tiny"
    assert manifest["model_info"]["scaling_factor"] == 0.18215  # the main model's, not the tiny VAE's 1.0
    for name in ("vae_encoder", "vae_decoder"):
        assert json.loads((onnx_taesd / name / "config.json").read_text()) == \
            json.loads((taesd_model / "vae_tiny" / "config.json").read_text())
    ort_backend, ref = load_backend(onnx_taesd, "onnx"), load_backend(taesd_model, "torch", vae="tiny")
    assert ort_backend.vae_kind == "tiny" and load_backend(onnx_taesd, "onnx", vae="tiny").vae_kind == "tiny"
    g = torch.Generator().manual_seed(1)
    pixels, latents = torch.rand(1, 3, 36, 52, generator=g) * 2 - 1, torch.randn(2, 4, 9, 13, generator=g)
    for got, want in ((ort_backend.encode_image(pixels), ref.encode_image(pixels)),
                      (ort_backend.decode_latents(latents), ref.decode_latents(latents))):
        assert got.shape == want.shape and ((got - want).abs().max() / want.abs().max()).item() < 1e-4

    kwargs = dict(steps=3, seed=5, resolution=64)
    torch_res = icv_deploy.load(taesd_model, vae="tiny")(scene_image, "Segment the cat", **kwargs)
    onnx_res = icv_deploy.load(onnx_taesd, engine="onnx")(scene_image, "Segment the cat", **kwargs)
    assert torch_res.visual.shape == onnx_res.visual.shape
    assert np.abs(torch_res.visual.astype(int) - onnx_res.visual.astype(int)).max() <= 3


@pytest.mark.slow
def test_onnx_folder_refuses_the_other_vae(onnx_taesd, tmp_path):
    with pytest.raises(ModelFilesError, match=r"from the tiny VAE, vae=full.*icv-export onnx --vae full") as err:
        load_backend(onnx_taesd, "onnx", vae="full")
    assert one_line(str(err.value))
    older = shutil.copytree(onnx_taesd, tmp_path / "older")  # a folder from before the tiny VAE: no "vae" = full
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["vae"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFilesError, match=r"from the full VAE, vae=tiny.*icv-export onnx --vae tiny") as err:
        icv_deploy.load(older, engine="onnx", vae="tiny")
    assert one_line(str(err.value))
    assert load_backend(older, "onnx").vae_kind == "full"


def test_engine_folder_refuses_the_other_vae(tmp_path):
    """Checked from the engine metadata before TensorRT is imported (so it runs here)."""
    from icv_deploy.backends.base import ModelInfo
    from icv_deploy.backends.trt_backend import METADATA_NAME, TrtBackend

    engines = {}
    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        (tmp_path / f"{name}.plan").write_bytes(b"plan")
        engines[name] = {"path": f"{name}.plan", "bytes": 4, "sha256": hashlib.sha256(b"plan").hexdigest()}
    for sub in ("tokenizer", "scheduler"):
        (tmp_path / sub).mkdir()
    metadata = {"format": "icv-deploy-tensorrt", "format_version": 1, "model_info": ModelInfo().__dict__,
                "engines": engines, "vae": "full"}
    (tmp_path / METADATA_NAME).write_text(json.dumps(metadata))
    with pytest.raises(ModelFilesError, match="from the full VAE, vae=tiny") as err:
        TrtBackend.from_folder(tmp_path, vae="tiny")
    assert one_line(str(err.value))


def test_export_resume_does_not_mix_full_and_tiny_vae_graphs(taesd_model, tmp_path, monkeypatch):
    """An export interrupted with one VAE resumes only with the same VAE; with the other it starts over."""
    from icv_deploy.export import onnx_export

    calls = []

    def fake_export_one(model_dir, output, sub, *args):  # no tracing: the resume decision is what is tested
        calls.append(sub.name)
        if sub.name == "vae_encoder" and crash[0]:
            raise KeyboardInterrupt
        (output / sub.name).mkdir(exist_ok=True)
        (output / sub.name / "model.onnx").write_bytes(sub.name.encode())
        return {"precision": "fp32"}

    crash = [True]
    monkeypatch.setattr(onnx_export, "_export_one", fake_export_one)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(taesd_model, out, vae="full", log=lambda *_: None)
    assert calls == ["text_encoder", "unet", "vae_encoder"]

    calls[:] = []
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(taesd_model, out, vae="tiny", log=lambda *_: None)
    assert calls == ["text_encoder", "unet", "vae_encoder"]  # nothing kept from the full-VAE run

    crash[0], calls[:] = False, []
    manifest = onnx_export.export_onnx(taesd_model, out, vae="tiny", log=lambda *_: None)
    assert calls == ["vae_encoder", "vae_decoder"]  # the same VAE: the finished parts are kept
    assert manifest["vae"] == "tiny"


# ---- icv-infer -----------------------------------------------------------------------------------------------------
def test_icv_infer_help_explains_vae():
    from icv_deploy.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--vae [full|tiny]" in result.output and "vae_tiny/" in result.output


def test_icv_infer_vae_tiny(taesd_model, tiny_model_f4, scene_image, tmp_path):
    from icv_deploy.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(scene_image).save(image)
    ok = CliRunner().invoke(main, ["--model", str(taesd_model), "--vae", "tiny", "--steps", "1", "--quiet",
                                   "--output", str(tmp_path / "ok"), str(image), "Segment the box"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["--model", str(tiny_model_f4), "--vae", "tiny", "--steps", "1", "--quiet",
                                    "--output", str(tmp_path / "o"), str(image), "Segment the box"])
    assert bad.exit_code == 2, bad.output
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "vae_tiny/" in lines[0]
    assert not (tmp_path / "o").exists()

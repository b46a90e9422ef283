"""The autoencoder stage (`icv-train-vae`, training/train_autoencoder.py) on the tiny dataset of test_train_run:
it learns to reconstruct, the saved folder is a diffusers AutoencoderKL whose scaling factor makes the latents of
the training pictures unit-variance, a resumed run equals an uninterrupted one, the decoder-only stage leaves the
encoder alone, and bad settings are named.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from icv_deploy.errors import IcvError

from test_train_run import make_dataset

pytestmark = pytest.mark.slow

ARCHITECTURE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 24, "layers_per_block": 1,
                "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4}
SMALL = {"architecture": ARCHITECTURE, "crop": 16, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5,
         "checkpoint_every": 10, "log_every": 5, "scaling_samples": 16}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("vae-data") / "data")


def train(data_dir, output, resume=None, **settings):
    from icv_deploy.training.train_autoencoder import load_autoencoder_config, train_autoencoder

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-repeatable runs
    try:
        cfg = load_autoencoder_config("demo-vae", {**SMALL, "data": str(data_dir), "output": str(output), **settings})
        return train_autoencoder(cfg, resume=resume)
    finally:
        torch.set_num_threads(before)


def pictures(data_dir) -> torch.Tensor:
    from icv_deploy.training.train_data import open_dataset

    rows = open_dataset(str(data_dir))
    arrays = [np.asarray(p.convert("RGB")) for p in list(rows["input_image"]) + list(rows["edited_image"])]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("vae") / "run"
    return train(data_dir, output, max_steps=200), output


def test_it_learns_to_reconstruct_and_saves_a_diffusers_autoencoder(trained, data_dir):
    from diffusers import AutoencoderKL

    model, output = trained
    logged = [json.loads(line) for line in (output / "logs" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(5, 201, 5))
    first, last = np.mean([r["l1"] for r in logged[:3]]), np.mean([r["l1"] for r in logged[-3:]])
    assert last < 0.6 * first, (first, last)
    vae = AutoencoderKL.from_pretrained(model, use_safetensors=True).eval()
    x = pictures(data_dir)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean
        recon = vae.decode(latents).sample
    # The scaling factor makes the training pictures' latents unit-variance, as SD's 0.18215 does for its data.
    assert (latents * vae.config.scaling_factor).std().item() == pytest.approx(1.0, rel=0.1)
    untrained = AutoencoderKL(**ARCHITECTURE).eval()
    with torch.no_grad():
        untrained_error = (untrained(x).sample - x).abs().mean()
    assert (recon - x).abs().mean() < 0.6 * untrained_error, ((recon - x).abs().mean(), untrained_error)  # 0.43x here


def test_a_resumed_run_equals_an_uninterrupted_one(data_dir, tmp_path):
    import shutil

    straight = train(data_dir, tmp_path / "straight", max_steps=20)
    # A run interrupted after its step-10 checkpoint: that checkpoint alone in a fresh output folder.
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "checkpoint-10",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-10")
    resumed = train(data_dir, tmp_path / "resumed", resume="latest", max_steps=20)
    a, b = load_file(straight / "diffusion_pytorch_model.safetensors"), load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_decoder_stage_keeps_the_encoder_and_its_scaling_factor(trained, data_dir, tmp_path):
    model, _ = trained
    decoder_stage = train(data_dir, tmp_path / "decoder", max_steps=10, init_from=str(model), train_part="decoder")
    before, after = load_file(model / "diffusion_pytorch_model.safetensors"), load_file(
        decoder_stage / "diffusion_pytorch_model.safetensors")
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    config = lambda folder: json.loads((folder / "config.json").read_text())  # noqa: E731
    assert config(decoder_stage)["scaling_factor"] == config(model)["scaling_factor"]


def test_the_outline_term_is_logged_and_changes_what_the_decoder_learns(trained, data_dir, tmp_path):
    """box_weight adds one_pass_loss.outline_band_loss (tested there) on the crops' detection outlines."""
    model, _ = trained
    runs = {weight: train(data_dir, tmp_path / f"box-{weight}", max_steps=10, init_from=str(model), train_part="decoder",
                          box_weight=weight) for weight in (0.0, 5.0)}
    logged = [json.loads(line) for line in (tmp_path / "box-5.0" / "logs" / "losses.jsonl").read_text().splitlines()]
    assert logged and all(np.isfinite(row["box_bce_dice"]) for row in logged)
    assert not any("box_bce_dice" in json.loads(line)
                   for line in (tmp_path / "box-0.0" / "logs" / "losses.jsonl").read_text().splitlines())
    with_term, without = (load_file(runs[w] / "diffusion_pytorch_model.safetensors") for w in (5.0, 0.0))
    assert any(not torch.equal(with_term[k], without[k]) for k in with_term if k.startswith("decoder."))


@pytest.mark.parametrize("settings, message", [
    ({"crop": 15}, "crop 15 must be a multiple of the autoencoder's scale factor 2"),
    ({"train_part": "decoder"}, "train_part must be all, or decoder with init_from"),
    ({"mixed_precision": "fp16"}, "mixed_precision must be no or bf16"),
    ({"crop_size": 16}, "unknown autoencoder config key(s) crop_size"),
    ({"init_from": "runs/nowhere/model"}, "init_from runs/nowhere/model: no trained autoencoder there"),
])
def test_bad_autoencoder_settings_are_named(data_dir, tmp_path, settings, message):
    with pytest.raises(IcvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(data_dir, tmp_path / "run", max_steps=1, **settings)

"""benchmarks/recognition_probe.py: the probe and the reference CNN checked on features and latents whose content is
known by construction, the scene reader against the synth adapter's own answers, then end to end on the demo model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import recognition_probe  # noqa: E402


def labels(n: int, categories: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, categories)) < 0.5


def test_the_probe_reads_presence_that_features_carry_and_not_what_they_lack():
    rng = np.random.default_rng(0)
    train_y, test_y = labels(300, 3, 1), labels(200, 3, 2)
    # informative: 3 of 20 dimensions say the labels, through noise; uninformative: noise alone
    informative = lambda y: np.concatenate([y + 0.2 * rng.normal(size=y.shape), rng.normal(size=(len(y), 17))], 1)  # noqa: E731
    assert min(recognition_probe.probe_accuracy(informative(train_y), train_y, informative(test_y), test_y)) > 0.95
    blind = recognition_probe.probe_accuracy(rng.normal(size=(300, 20)), train_y, rng.normal(size=(200, 20)), test_y)
    assert max(blind) < 0.65


def test_a_category_never_present_in_training_is_answered_by_the_majority():
    train_y, test_y = labels(50, 2, 1), labels(40, 2, 2)
    train_y[:, 1] = False
    features = np.random.default_rng(0).normal(size=(50, 4))
    scores = recognition_probe.probe_accuracy(features, train_y, features[:40], test_y)
    assert scores[1] == pytest.approx(np.mean(~test_y[:, 1]))


def test_the_reference_cnn_learns_presence_it_can_see():
    """Latents with a bright 3 x 3 blob in channel c wherever category c is present (anywhere on the grid): a
    recogniser that learns must beat the base rate by far within a few hundred steps."""
    rng = np.random.default_rng(0)

    def latents(y):
        x = rng.normal(scale=0.3, size=(len(y), 4, 12, 12)).astype(np.float32)
        for i, c in zip(*np.nonzero(y)):
            r, s = rng.integers(0, 10, size=2)
            x[i, c, r:r + 3, s:s + 3] += 2.0
        return torch.from_numpy(x)

    train_y, test_y = labels(400, 4, 1), labels(100, 4, 2)
    curve = recognition_probe.train_reference(latents(train_y), train_y, latents(test_y), test_y, steps=200,
                                              report_every=100, progress=False)
    assert [p["step"] for p in curve] == [100, 200]
    assert min(curve[-1]["accuracy"]) > 0.9
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] or curve[0]["train_loss"] < 0.1


def test_scenes_are_read_with_the_categories_the_synth_adapter_answers_yes_for(tmp_path):
    from icv_deploy.training.datasets.synth import SynthAdapter
    from icv_deploy.training.synthetic import write_scenes

    root = write_scenes(tmp_path / "scenes", 6, seed=3, size=64, progress=False)
    pictures, presence, categories = recognition_probe.synth_scenes(f"synth:{root}", None)
    assert pictures.shape == (6, 64, 64, 3) and pictures.dtype == np.uint8 and presence.shape == (6, len(categories))
    adapter = SynthAdapter(root)
    for row, image_id in enumerate(adapter.ids):
        positives = {r.category for r in adapter.index(["classification"]) if r.key == image_id and r.present}
        assert {c for c, p in zip(categories, presence[row]) if p} == positives
    assert len(recognition_probe.synth_scenes(f"synth:{root}", 2)[0]) == 2


def test_features_are_pooled_per_block_and_the_hooks_removed(tmp_path):
    from diffusers import UNet2DConditionModel

    from icv_deploy.testing import make_tiny_model

    unet = UNet2DConditionModel.from_pretrained(make_tiny_model(tmp_path / "m") / "unet").eval()
    latents = torch.randn(5, 4, unet.config.sample_size, unet.config.sample_size)
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    blocks = ("down_blocks.0", "mid_block")
    feats = recognition_probe.pooled_features(unet, latents, text, 999, blocks=blocks, batch=2)
    widths = {"down_blocks.0": unet.config.block_out_channels[0], "mid_block": unet.config.block_out_channels[-1]}
    assert {b: f.shape for b, f in feats.items()} == {b: (5, 2 * widths[b]) for b in blocks}
    again = recognition_probe.pooled_features(unet, latents, text, 999, blocks=blocks, batch=5)
    assert np.allclose(feats["mid_block"], again["mid_block"], atol=1e-5)  # batching does not change a picture's features
    assert all(not m._forward_hooks for m in unet.modules())


def test_the_demo_model_end_to_end(tmp_path):
    from icv_deploy.training.synthetic import write_scenes

    train = write_scenes(tmp_path / "train", 16, seed=0, size=64, progress=False)
    held_out = write_scenes(tmp_path / "held", 10, seed=1, size=64, progress=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(recognition_probe.main, [
        "--train", f"synth:{train}", "--probe-scenes", "16", "--data", f"synth:{held_out}", "--no-random-control",
        "--reference-steps", "2", "--reference-scenes", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "recognition.json").read_text())
    _, presence, _ = recognition_probe.synth_scenes(f"synth:{held_out}", None)
    assert doc["base_rate"] == pytest.approx(np.maximum(presence.mean(0), 1 - presence.mean(0)).tolist())
    assert doc["timestep"] == 999 and set(doc["probe"]) == {"trained"}
    assert set(doc["probe"]["trained"]) == set(recognition_probe.BLOCKS)
    assert all(0 <= a <= 1 and round(a * 10) == pytest.approx(a * 10) for scores in doc["probe"]["trained"].values()
               for a in scores)  # accuracies over 10 held-out scenes
    assert [p["step"] for p in doc["reference"]] == [2] and doc["reference_scenes"] == 12
    assert "mid_block, trained UNet" in (out / "recognition.md").read_text()


def test_data_without_annotations_is_refused(tmp_path):
    result = CliRunner().invoke(recognition_probe.main, ["--train", f"nyuv2:{tmp_path}", "--data", f"synth:{tmp_path}",
                                                         "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error:") and "synth" in result.output
    assert len(result.output.strip().splitlines()) == 1

"""Training pieces that need no model: configs, paired augmentation, data order, dropout, checkpoint listing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from icv_deploy.errors import IcvError
from icv_deploy.training.augment import example_rng, paired_augment
from icv_deploy.training.config import TrainConfig, load_config, parse_set, shipped_configs
from icv_deploy.training.objectives import dropout_masks, timestep_weights
from icv_deploy.training.train_checkpoints import find_resume_checkpoint, list_checkpoints
from icv_deploy.training.train_data import EpochShuffleSampler


def test_shipped_configs_hold_the_paper_recipe():
    assert {"instructcv-fp", "instructcv-rp", "tiny"} <= set(shipped_configs())
    for name in ("instructcv-fp", "instructcv-rp"):
        cfg = load_config(name)
        assert cfg.learning_rate == pytest.approx(1e-4) and isinstance(cfg.learning_rate, float)
        assert (cfg.lr_scheduler, cfg.lr_warmup_steps) == ("constant", 0)
        assert (cfg.resolution, cfg.resize_min, cfg.resize_max, cfg.random_flip) == (256, 256, 288, True)
        assert (cfg.total_batch_size, cfg.num_epochs, cfg.use_ema, cfg.mixed_precision) == (128, 20, True, "fp16")
        assert cfg.conditioning_dropout_prob == pytest.approx(0.05)
    tiny = load_config("tiny")
    assert tiny.base_model == "random:tiny" and tiny.mixed_precision == "no"


def test_overrides_win_and_bad_keys_are_one_line_errors(tmp_path):
    cfg = load_config("tiny", {"max_steps": 7, "learning_rate": None, **parse_set(["seed=3", "runtime={steps: 5}"])})
    assert (cfg.max_steps, cfg.seed, cfg.learning_rate) == (7, 3, load_config("tiny").learning_rate)
    assert cfg.runtime["steps"] == 5 and cfg.runtime["sampler"] == "euler_a"  # merged with the defaults
    path = tmp_path / "mine.yaml"
    path.write_text("learning_rate: 3e-5\nresolution: 64\nresize_min: 64\nresize_max: 72\n")
    assert load_config(path).learning_rate == pytest.approx(3e-5)
    with pytest.raises(IcvError, match="unknown config key"):
        load_config(None, {"learning_rat": 1.0})
    with pytest.raises(IcvError, match="no shipped config"):
        load_config("no-such-config")
    with pytest.raises(IcvError, match="resize_min"):
        TrainConfig(resolution=256, resize_min=200).check()
    with pytest.raises(IcvError, match="text_encoder_learning_rate must be positive, got 0.0"):
        load_config("tiny", {"text_encoder_learning_rate": 0.0})


def test_a_config_that_extends_another_holds_only_what_differs(tmp_path):
    """`extends`: the named config (shipped name, or a path relative to the file) read first, this file's keys over
    it, sections merged key by key and chains followed; a cycle is a one-line error."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "stage.yaml").write_text("extends: demo-masks\nmax_steps: 50\ndecoded_loss:\n"
                                                  "  color_weight: 0.5\n  min_timestep: 500\n")
    (tmp_path / "runs" / "late.yaml").write_text("extends: stage.yaml\nseed: 9\n")
    masks, late = load_config("demo-masks"), load_config(tmp_path / "runs" / "late.yaml")
    assert (late.max_steps, late.seed) == (50, 9)
    assert late.decoded_loss == {**masks.decoded_loss, "color_weight": 0.5, "min_timestep": 500}
    assert masks.decoded_loss["mask_weight"] > 0 and late.scene_recognition == masks.scene_recognition
    differ = {k for k, v in late.to_dict().items() if v != masks.to_dict()[k]}
    assert differ == {"max_steps", "seed", "decoded_loss"}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(IcvError, match=r"extends itself \(a -> b -> a\)"):
        load_config(tmp_path / "a.yaml")


def _picture(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_paired_augment_moves_input_and_target_together():
    image = _picture(0)
    inverse = Image.fromarray(255 - np.asarray(image))
    flips = set()
    for index in range(12):
        a, b = paired_augment(image, image, example_rng(1, 0, index), resolution=24, resize_min=24, resize_max=32)
        assert a.shape == (3, 24, 24) and torch.equal(a, b)
        # A pixel-wise transform of the target commutes with the geometric transform up to resampling rounding.
        c, d = paired_augment(image, inverse, example_rng(1, 0, index), resolution=24, resize_min=24, resize_max=32)
        assert torch.allclose(c, -d, atol=2.5 / 127.5)
        # Reference: PIL resize of the whole picture, then the crop is somewhere inside it (maybe mirrored).
        size = int(example_rng(1, 0, index).integers(24, 33))
        full = torch.from_numpy(np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), np.float32))
        full = full.permute(2, 0, 1) / 127.5 - 1
        found = [f for f in (False, True) for y in range(size - 23) for x in range(size - 23)
                 if torch.equal((full.flip(-1) if f else full)[:, y:y + 24, x:x + 24], a)]
        assert found, "the crop is not a window of the resized picture"
        flips.add(found[0])
    assert flips == {False, True}  # both branches of the random flip were taken
    again, _ = paired_augment(image, image, example_rng(1, 0, 5), resolution=24, resize_min=24, resize_max=32)
    other, _ = paired_augment(image, image, example_rng(1, 1, 5), resolution=24, resize_min=24, resize_max=32)
    first, _ = paired_augment(image, image, example_rng(1, 0, 5), resolution=24, resize_min=24, resize_max=32)
    assert torch.equal(again, first) and not torch.equal(again, other)


def test_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochShuffleSampler(50, seed=4)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(50))
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_conditioning_dropout_shares():
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0))
    drop_text, drop_image = dropout_masks(u, 0.05)
    shares = [(drop_text & ~drop_image).float().mean(), (~drop_text & drop_image).float().mean(),
              (drop_text & drop_image).float().mean(), (~drop_text & ~drop_image).float().mean()]
    assert [round(float(s), 2) for s in shares] == [0.05, 0.05, 0.05, 0.85]


def draw_timesteps(cfg: TrainConfig, n: int = 100_000) -> torch.Tensor:
    """The timesteps instruct_pix2pix_loss draws for a batch of n cached examples under the config's bias (a UNet
    stand-in records them)."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from icv_deploy.training.objectives import instruct_pix2pix_loss

    seen = []

    def unet(sample, timesteps, encoder_hidden_states, return_dict):
        seen.append(timesteps)
        return (sample[:, :4],)

    batch = {"image_latents": torch.zeros(n, 4, 1, 1), "target_mean": torch.zeros(n, 4, 1, 1),
             "target_std": torch.ones(n, 4, 1, 1), "input_ids": torch.zeros(n, 1, dtype=torch.long)}
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0))
    scheduler = DDPMScheduler()
    instruct_pix2pix_loss(batch, unet, vae, lambda ids: (torch.zeros(len(ids), 1, 8),), scheduler, torch.zeros(1, 1, 8),
                          0.0, torch.Generator().manual_seed(0), torch.float32,
                          weights=timestep_weights(cfg, scheduler.config.num_train_timesteps))
    return seen[0]


@pytest.mark.parametrize("strategy, multiplier, portion, share_of_top_quarter, share_of_bottom_quarter", [
    ("none", 3.0, 0.25, 0.25, 0.25),     # no bias whatever the multiplier
    ("later", 1.0, 0.25, 0.25, 0.25),    # a multiplier of 1 changes nothing
    ("later", 3.0, 0.25, 0.50, 0.167),   # t >= 750 drawn 3x as often: 0.75 / 1.5 of the draws
    ("earlier", 3.0, 0.25, 0.167, 0.50),
    ("later", 0.5, 0.5, 0.167, 0.333),   # the top half drawn half as often (0.25 / 0.75 of the draws)
])
def test_timestep_bias_follows_diffusers_semantics(strategy, multiplier, portion, share_of_top_quarter,
                                                   share_of_bottom_quarter):
    t = draw_timesteps(TrainConfig(timestep_bias_strategy=strategy, timestep_bias_multiplier=multiplier,
                                   timestep_bias_portion=portion))
    assert int(t.min()) == 0 and int(t.max()) == 999  # every timestep still drawn
    assert float((t >= 750).float().mean()) == pytest.approx(share_of_top_quarter, abs=0.005)
    assert float((t < 250).float().mean()) == pytest.approx(share_of_bottom_quarter, abs=0.005)


@pytest.mark.parametrize("settings, message", [
    ({"timestep_bias_strategy": "range"}, "timestep_bias_strategy must be none, later or earlier"),
    ({"timestep_bias_strategy": "later", "timestep_bias_multiplier": 0}, "timestep_bias_multiplier must be > 0"),
    ({"timestep_bias_strategy": "later", "timestep_bias_portion": 1.5}, "timestep_bias_portion in"),
])
def test_bad_timestep_bias_is_named(settings, message):
    with pytest.raises(IcvError, match=message):
        TrainConfig(**settings).check()


def test_only_complete_checkpoints_count(tmp_path):
    for step in (4, 12, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text("{}")
    (tmp_path / "checkpoint-16").mkdir()  # no state file: written while the run was killed
    (tmp_path / ".checkpoint-20.tmp").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8, 12]
    assert find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-12"
    assert find_resume_checkpoint(tmp_path / "none", "latest") is None
    with pytest.raises(IcvError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-16"))


def test_cli_bad_input_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from icv_deploy.training.train import main

    not_a_dataset = tmp_path / "empty"
    not_a_dataset.mkdir()
    for args, message in [
        (["--config", "tiny", "--data", str(tmp_path / "missing")], "no such folder"),
        (["--config", "tiny", "--data", str(not_a_dataset)], "not a saved `datasets` dataset"),
        (["--config", "tiny"], "no training data"),
        (["--config", "tiny", "--set", "learning_rate"], "expected key=value"),
    ]:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_cli_set_values_reach_the_config_unless_a_named_option_is_given(monkeypatch, tmp_path):
    """A named option left unset must not erase `--set` of the same key (it once did: --set learning_rate=1e-3 ran
    at the config's 5e-4); a named option that is given wins."""
    from click.testing import CliRunner

    from icv_deploy.training import train as train_module

    seen = []

    def fake_train(cfg, resume=None):
        seen.append(cfg)
        return train_module.TrainResult(step=0, model_dir=None)

    monkeypatch.setattr(train_module, "train", fake_train)
    for args, learning_rate, max_steps in [
        (["--set", "learning_rate=1e-3", "--set", "max_steps=7"], 1e-3, 7),
        (["--set", "learning_rate=1e-3", "--learning-rate", "2e-3", "--max-steps", "9"], 2e-3, 9),
        ([], load_config("tiny").learning_rate, load_config("tiny").max_steps),
    ]:
        result = CliRunner().invoke(train_module.main, ["--config", "tiny", "--output", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert (seen[-1].learning_rate, seen[-1].max_steps) == (learning_rate, max_steps)


def test_open_dataset_checks_columns_and_caps_samples(tmp_path):
    import datasets

    from icv_deploy.training.train_data import open_dataset, validation_indices

    pictures = [_picture(i, (8, 8)) for i in range(5)]
    rows = {"input_image": pictures, "edit_prompt": ["Segment the cat"] * 5, "edited_image": pictures,
            "task": ["depth", "segmentation", "depth", "detection", "segmentation"], "category": [None, "cat", None, "dog", "cat"],
            "source": ["fixture"] * 5, "image_id": [str(i) for i in range(5)]}
    ds = datasets.Dataset.from_dict(rows).cast_column("input_image", datasets.Image()).cast_column("edited_image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "splits"))
    ds.remove_columns(["edited_image"]).save_to_disk(str(tmp_path / "no-target"))

    assert len(open_dataset(tmp_path / "flat")) == 5 and len(open_dataset(tmp_path / "splits")) == 5
    capped = open_dataset(tmp_path / "flat", max_train_samples=3)
    assert len(capped) == 3 and capped["image_id"] == ["0", "1", "2"]
    assert validation_indices(open_dataset(tmp_path / "flat"), 1) == [0, 1, 3]  # first example of each task
    assert validation_indices(open_dataset(tmp_path / "flat"), 2) == [0, 2, 1, 4, 3]
    with pytest.raises(IcvError, match="missing column.*edited_image"):
        open_dataset(tmp_path / "no-target")

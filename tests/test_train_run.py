"""Training runs end to end on the CPU: 2 processes under accelerate, overfitting, resume, a killed run.

The data is a tiny `icv-data build`-format dataset made here (datasets.Dataset + Image features, save_to_disk);
the model is the tiny random one (`random:tiny`) at 16 px, so that a step takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from icv_deploy.tasks.encodings import encode_classification, encode_depth, encode_detection, encode_segmentation

pytestmark = pytest.mark.slow

# 16 px pictures (latents 4x4 with the tiny VAE's scale factor 4), no tensorboard, no intermediate grids.
FAST = ["--set", "resolution=16", "--set", "resize_min=16", "--set", "resize_max=18", "--set", "validation_sampler_steps=2"]
NO_TENSORBOARD = ["--set", "report_to=none"]
FAST_CFG = dict(resolution=16, resize_min=16, resize_max=18, report_to="none", validation_sampler_steps=2)


def make_dataset(out: Path, per_task: int = 2, size: int = 24, seed: int = 0) -> Path:
    """One red square per picture on a plain background; targets painted by icv_deploy.tasks.encodings."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("input_image", "edit_prompt", "edited_image", "task", "category", "source", "image_id")}
    for task in ("segmentation", "detection", "depth", "classification"):
        for i in range(per_task):
            image = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
            x0, y0 = (int(v) for v in rng.integers(1, size // 2, 2))
            x1, y1 = x0 + size // 3, y0 + size // 3
            image[y0:y1, x0:x1] = (255, 0, 0)
            mask = np.zeros((size, size), bool)
            mask[y0:y1, x0:x1] = True
            if task == "segmentation":
                target, prompt = encode_segmentation(mask), "Segment the square"
            elif task == "detection":
                target, prompt = encode_detection(image, np.array([[x0, y0, x1, y1]], float)), "Detect the square"
            elif task == "depth":
                target, prompt = encode_depth(np.where(mask, 2.0, 6.0).astype(np.float32)), "Create a monocular depth map"
            else:
                target = encode_classification(True, (size, size))
                prompt = "Show blue if the picture has a square, otherwise show black"
            rows["input_image"].append(Image.fromarray(image))
            rows["edited_image"].append(Image.fromarray(target))
            rows["edit_prompt"].append(prompt)
            rows["task"].append(task)
            rows["category"].append(None if task == "depth" else "square")
            rows["source"].append("fixture")
            rows["image_id"].append(f"{task}-{i}")
    ds = datasets.Dataset.from_dict(rows)
    ds = ds.cast_column("input_image", datasets.Image()).cast_column("edited_image", datasets.Image())
    ds.save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train-data") / "data")


def run_in_process(**settings):
    """`train()` in this process, with a fresh accelerate state (one Accelerator per run)."""
    from accelerate.state import AcceleratorState, GradientState

    from icv_deploy.training.config import load_config
    from icv_deploy.training.train import train

    resume = settings.pop("resume", None)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return train(load_config("tiny", {**FAST_CFG, **settings}), resume=resume)


def assert_resume_repeats(run, source: Path, step: int, output: Path, last: int, **settings) -> None:
    """Copy checkpoint-`step` of `run` (trained into `source`) into a fresh `output`, resume it with `settings` up to
    step `last`, and assert the resumed run repeats the uninterrupted run's losses from step+1 to `last`."""
    (output / "checkpoints").mkdir(parents=True)
    name = f"checkpoint-{step}"
    shutil.copytree(source / "checkpoints" / name, output / "checkpoints" / name)
    again = run_in_process(output=str(output), max_steps=last, resume="latest", **settings)
    assert sorted(again.losses) == list(range(step + 1, last + 1))
    np.testing.assert_allclose([again.losses[s] for s in range(step + 1, last + 1)],
                               [run.losses[s] for s in range(step + 1, last + 1)], rtol=1e-5, atol=1e-7)


def read_losses(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "logs" / "losses.jsonl").read_text().splitlines()]


def subprocess_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def test_two_processes_under_accelerate_launch(data_dir, tmp_path):
    import icv_deploy
    from diffusers import StableDiffusionInstructPix2PixPipeline

    output = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "icv_deploy.training.train", "--config", "tiny", "--data", str(data_dir), "--output", str(output),
           "--max-steps", "3", "--checkpoint-every", "2", "--validation-every", "0", *FAST]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "process 0 of 2" in log and "process 1 of 2" in log, log[-3000:]
    assert "MULTI_CPU" in log
    # Both ranks saved their state into the checkpoint; the logged loss is the mean over the 2 processes.
    checkpoint = output / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert [(r["step"], r["processes"]) for r in read_losses(output)] == [(1, 2), (2, 2), (3, 2)]
    assert (output / "checkpoints" / "checkpoint-3").exists() and list((output / "validation").glob("*.png"))
    # Loss and learning rate went to tensorboard through accelerate's tracker (main process only).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "logs" / "icv-train")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([1e-3] * 3)
    assert "validation" in events.Tags()["images"]

    model = output / "model"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model)
    assert pipe.unet.config.in_channels == 8 and pipe.unet.conv_in.weight.shape[1] == 8
    assert list((model / "unet").glob("*.safetensors")) and not list(model.rglob("*.bin"))
    assert json.loads((model / "icv_config.json").read_text())["resolution"] == 16
    from PIL import Image

    out = pipe("Segment the square", image=Image.new("RGB", (16, 16), (90, 90, 90)), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert out.shape == (16, 16, 3) and np.isfinite(out).all()
    result = icv_deploy.load(model)(np.full((16, 16, 3), 90, np.uint8), "Segment the square", steps=2)
    assert result.task == "segmentation" and result.visual.dtype == np.uint8


def test_overfit_then_resume_reproduces_the_loss_curve(data_dir, tmp_path, one_thread):
    from diffusers import UNet2DConditionModel

    output = tmp_path / "overfit"
    # 8 examples, 2 per batch: 4 steps per epoch; checkpoint-30 lies in the middle of an epoch.
    result = run_in_process(data=str(data_dir), output=str(output), max_steps=120, checkpoint_every=30,
                            checkpoints_keep=10, validation_every=0, ema_decay=0.9)
    losses = [result.losses[s] for s in range(1, 121)]
    assert np.mean(losses[-15:]) < 0.5 * np.mean(losses[:15]), (np.mean(losses[:15]), np.mean(losses[-15:]))
    assert [r["loss"] for r in read_losses(output)] == losses

    # The final model holds the EMA weights, which differ from the raw weights saved in the last checkpoint.
    saved = UNet2DConditionModel.from_pretrained(output / "model", subfolder="unet")
    from safetensors.torch import load_file

    raw = load_file(output / "checkpoints" / "checkpoint-120" / "model.safetensors")
    assert not torch.equal(saved.conv_in.weight, raw["conv_in.weight"])
    checkpoint = output / "checkpoints" / "checkpoint-120"
    # The EMAs as safetensors, not accelerate's custom-object pickles (read with weights_only=False; DESIGN.md 10)
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    ema_file = load_file(checkpoint / "ema_0.safetensors")
    shadow = [ema_file[name] for name in sorted(ema_file)]
    assert len(shadow) == len(list(saved.parameters()))
    assert all(torch.equal(p, s.cpu()) for p, s in zip(saved.parameters(), shadow))

    # Resume from the mid-epoch checkpoint-30 in a fresh folder: the same losses at the same steps.
    assert_resume_repeats(result, output, 30, tmp_path / "resumed", last=42, data=str(data_dir), checkpoint_every=30,
                          validation_every=0, ema_decay=0.9)


def test_killed_run_resumes_from_its_last_checkpoint(data_dir, tmp_path, one_thread):
    output = tmp_path / "killed"
    # Gradient accumulation too: 2 micro-batches of 2 per step, 2 steps per epoch.
    cmd = [sys.executable, "-m", "icv_deploy.training.train", "--config", "tiny", "--data", str(data_dir),
           "--output", str(output), "--max-steps", "100000", "--checkpoint-every", "3", "--validation-every", "0",
           "--total-batch-size", "4", *FAST, *NO_TENSORBOARD]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 400
        while not (output / "checkpoints" / "checkpoint-6" / "training_state.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint-6 in time"
            time.sleep(0.05)
        time.sleep(0.5)  # let it run on past the checkpoint: those steps are lost
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from icv_deploy.training.train_checkpoints import list_checkpoints

    before = read_losses(output)
    last = list_checkpoints(output / "checkpoints")[-1][0]
    assert last >= 6 and last % 3 == 0 and not (output / "model").exists()
    result = run_in_process(data=str(data_dir), output=str(output), max_steps=last + 4, checkpoint_every=3,
                            validation_every=0, total_batch_size=4, resume="latest")
    assert min(result.losses) == last + 1 and result.step == last + 4
    assert (output / "model" / "model_index.json").exists()
    # Steps that the killed run logged past its checkpoint are redone with the same losses.
    redone = {r["step"]: r["loss"] for r in before if r["step"] > last}
    for step, loss in redone.items():
        if step in result.losses:
            assert result.losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert [r["step"] for r in before][:last] == list(range(1, last + 1))


def test_a_swapped_autoencoder_is_the_one_the_trained_model_carries(data_dir, tiny_model, tmp_path, one_thread):
    """`base_vae` beside a trained base: the latents are encoded with it and the saved model decodes with it (a
    model saved with its base's autoencoder would decode latents of another space)."""
    from diffusers import AutoencoderKL

    swapped = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    with torch.no_grad():
        for weight in swapped.parameters():
            weight.mul_(1.05)
    swapped.save_pretrained(tmp_path / "vae", safe_serialization=True)
    run_in_process(data=str(data_dir), output=str(tmp_path / "run"), base_model=str(tiny_model),
                   base_vae=str(tmp_path / "vae"), max_steps=2, checkpoint_every=0, validation_every=0,
                   cache_latents=True, resize_max=16, random_flip=False, use_ema=False)
    saved = AutoencoderKL.from_pretrained(tmp_path / "run" / "model", subfolder="vae")
    base = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    for (name, weight), expected, old in zip(saved.state_dict().items(), swapped.state_dict().values(),
                                             base.state_dict().values()):
        assert torch.equal(weight, expected), name
        if weight.is_floating_point() and weight.abs().sum() > 0:
            assert not torch.equal(weight, old), name


def test_the_trained_model_reads_boxes_as_its_data_painted_them(data_dir, tiny_model, tmp_path, one_thread):
    """A build with wider outlines (`icv-data build --box-width`, icv_build.json box_line_fraction) makes a model whose
    icv_config.json says so, and the runtime reads its boxes with that width; other data leaves the contract's."""
    import icv_deploy

    wide = tmp_path / "data"
    shutil.copytree(data_dir, wide)
    (wide / "icv_build.json").write_text(json.dumps({"options": {"box_line_fraction": 3 / 128}}))
    settings = dict(base_model=str(tiny_model), max_steps=1, checkpoint_every=0, validation_every=0, use_ema=False)
    run_in_process(data=str(wide), output=str(tmp_path / "wide"), **settings)
    run_in_process(data=str(data_dir), output=str(tmp_path / "plain"), **settings)
    assert json.loads((tmp_path / "wide" / "model" / "icv_config.json").read_text())["box_line_fraction"] == 3 / 128
    assert "box_line_fraction" not in json.loads((tmp_path / "plain" / "model" / "icv_config.json").read_text())
    assert icv_deploy.load(tmp_path / "wide" / "model").box_line_fraction == 3 / 128
    assert icv_deploy.load(tmp_path / "plain" / "model").box_line_fraction is None


def test_the_text_encoder_trains_at_its_own_rate_on_rephrased_instructions(data_dir, tiny_model, tmp_path, one_thread):
    """`text_encoder_learning_rate` is the text encoder's alone, and `rephrase` (every instruction drawn from the
    phrasing grammar) trains end to end on cached latents."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    def distance(trained, base):
        return max((a - b).abs().max().item() for a, b in zip(trained.parameters(), base.parameters()))

    base_text = CLIPTextModel.from_pretrained(tiny_model, subfolder="text_encoder")
    base_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    moved = {}
    for text_rate in (1e-12, 1e-2):
        output = tmp_path / f"text-{text_rate}"
        run_in_process(data=str(data_dir), output=str(output), base_model=str(tiny_model), max_steps=3,
                       checkpoint_every=0, validation_every=0, cache_latents=True, resize_max=16, random_flip=False,
                       use_ema=False, train_text_encoder=True, learning_rate=1e-3, text_encoder_learning_rate=text_rate,
                       rephrase={"share": 1.0})
        text = CLIPTextModel.from_pretrained(output / "model", subfolder="text_encoder")
        unet = UNet2DConditionModel.from_pretrained(output / "model", subfolder="unet")
        moved[text_rate] = distance(text, base_text)
        assert distance(unet, base_unet) > 1e-4  # the UNet trains at learning_rate either way
    assert moved[1e-12] < 1e-8 < 1e-3 < moved[1e-2]

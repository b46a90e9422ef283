"""The autoencoder stage: train a small `AutoencoderKL` from scratch on the pictures an InstructCV model reads
and paints (inputs and targets v(y) of an `icv-data build` folder).

    icv-train-vae --config demo-vae --data data/demo --output runs/demo-vae [--resume latest]
    icv-train-vae --config demo-vae-decoder --data data/demo --output runs/demo-vae-decoder   # decoder only

Stable Diffusion brings its own VAE; a model trained from scratch (the bundled demo model) needs one first, and
it must reproduce what the decoders read: pure blue outlines one pixel wide, flat white masks, grey depth ramps
and solid colour cards, as well as the scenes. The loss is L1 + MSE on the pixels, plus a small KL term (as
the latent-diffusion VAEs; no adversarial or perceptual term: no pretrained network is needed or available).
Training runs on random square crops (the autoencoder is fully convolutional), half inputs and half targets.

Determinism and resuming: crop positions, picture choice and flips of step k come from (seed, k) alone, so a run
resumed from a checkpoint continues exactly as an uninterrupted one. Checkpoints (safetensors weights +
optimizer state read with `weights_only=True`) are written atomically every `checkpoint_every` steps.
The final folder `OUTPUT/model` is a diffusers `AutoencoderKL` whose `scaling_factor` is 1 / std of the latents
over the training pictures (how Stable Diffusion's 0.18215 was chosen).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import yaml

from icv_deploy.cli_common import debug_option, one_line_errors
from icv_deploy.errors import IcvError

from .config import CONFIG_DIR, reject_unknown_keys
from .one_pass_loss import outline_band_loss, outline_weight_map
from .train_checkpoints import STATE_FILE, list_checkpoints

logger = logging.getLogger("icv_deploy.training")


@dataclass
class AutoencoderConfig:
    data: str | None = None
    output: str = "runs/vae"
    architecture: dict = field(default_factory=dict)  # AutoencoderKL(**architecture)
    # Second stage: start from a trained autoencoder folder and train only its decoder. The encoder, hence the
    # latent space a UNet is trained in, stays exactly as it was (as Stable Diffusion's fine-tuned ft-MSE decoder).
    init_from: str | None = None
    train_part: str = "all"  # "all" or "decoder"
    crop: int = 64  # training crop size (pixels, a multiple of the scale factor)
    batch_size: int = 32
    max_steps: int = 2000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    target_share: float = 0.5  # share of crops taken from targets v(y) rather than input pictures
    # Detection outlines are one pixel of pure blue among many textured ones: without extra weight the L1 of a
    # small autoencoder smears them away, and the box decoder has nothing to read.
    outline_weight: float = 20.0
    # BCE + soft Dice of the soft blueness against the outlines, on and beside them (one_pass_loss.outline_band_loss):
    # asks for outlines blue enough for the runtime's blue test, where the weighted L1 accepts a purple-blue smear.
    box_weight: float = 0.0
    box_sharpness: float = 10.0
    mixed_precision: str = "no"  # "bf16": autocast on CPUs with AMX (about 2x faster), fp32 weights either way
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    scaling_samples: int = 512  # pictures whose latents set the scaling factor


def load_autoencoder_config(name_or_path: str, overrides: dict | None = None) -> AutoencoderConfig:
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise IcvError(f"config {name_or_path}: no such file and no shipped config of that name")
    values = yaml.safe_load(path.read_text()) or {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    reject_unknown_keys("autoencoder config", values, AutoencoderConfig.__dataclass_fields__)
    cfg = AutoencoderConfig(**values)
    if cfg.train_part not in ("all", "decoder") or (cfg.train_part == "decoder" and not cfg.init_from):
        raise IcvError(f"train_part must be all, or decoder with init_from (a trained autoencoder), not {cfg.train_part!r}")
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").is_file():
        raise IcvError(f"init_from {cfg.init_from}: no trained autoencoder there (no config.json; run the stage that "
                       "makes it first)")
    if cfg.mixed_precision not in ("no", "bf16"):
        raise IcvError(f"autoencoder mixed_precision must be no or bf16, not {cfg.mixed_precision!r}")
    factor = 2 ** (len(cfg.architecture.get("block_out_channels", (0,))) - 1)
    if cfg.crop % factor:
        raise IcvError(f"crop {cfg.crop} must be a multiple of the autoencoder's scale factor {factor}")
    return cfg


class PictureBank:
    """Every input and target picture of the dataset as one uint8 array (N, H, W, 3): small at demo sizes."""

    def __init__(self, rows):
        inputs = [np.asarray(r.convert("RGB")) for r in rows["input_image"]]
        targets = [np.asarray(r.convert("RGB")) for r in rows["edited_image"]]
        if len({p.shape for p in inputs + targets}) != 1:
            raise IcvError("the autoencoder stage needs pictures of one size: build the data with --size N")
        self.inputs, self.targets = np.stack(inputs), np.stack(targets)

    def batch(self, step: int, cfg: AutoencoderConfig) -> torch.Tensor:
        """Crops of step `step`: a function of (seed, step) only."""
        rng = np.random.default_rng([cfg.seed, step])
        n, h, w, _ = self.inputs.shape
        out = np.empty((cfg.batch_size, cfg.crop, cfg.crop, 3), np.uint8)
        for i in range(cfg.batch_size):
            bank = self.targets if rng.random() < cfg.target_share else self.inputs
            top, left = int(rng.integers(0, h - cfg.crop + 1)), int(rng.integers(0, w - cfg.crop + 1))
            crop = bank[int(rng.integers(n)), top:top + cfg.crop, left:left + cfg.crop]
            out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def autoencoder_loss(vae, pixels: torch.Tensor, cfg: AutoencoderConfig, gen: torch.Generator):
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
    recon = vae.decode(latents).sample.float()
    weight = outline_weight_map(pixels, cfg.outline_weight)
    l1 = (weight * (recon - pixels).abs()).mean()
    mse = (weight * (recon - pixels) ** 2).mean()
    kl = posterior.kl().float().mean() / latents[0].numel()
    loss, terms = l1 + cfg.mse_weight * mse + cfg.kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}
    if cfg.box_weight > 0:
        box = outline_band_loss(recon, pixels.float(), cfg.box_sharpness)
        loss, terms["box_bce_dice"] = loss + cfg.box_weight * box, box.item()
    return loss, terms


def _save_checkpoint(root: Path, step: int, vae, optimizer, keep: int = 2) -> None:
    """checkpoint-<step>/ with the same layout rules as icv-train's (train_checkpoints): complete once its
    state file is there; the last `keep` are kept."""
    import shutil

    from safetensors.torch import save_file

    from icv_deploy.atomic import atomic_dir

    with atomic_dir(root / f"checkpoint-{step}") as tmp:
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


@torch.no_grad()
def latent_std(vae, bank: PictureBank, samples: int) -> float:
    """Standard deviation of the posterior means over the first `samples` inputs and targets."""
    picked = np.concatenate([bank.inputs[: samples // 2], bank.targets[: samples // 2]])
    values = []
    for start in range(0, len(picked), 64):
        x = torch.from_numpy(picked[start:start + 64]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        values.append(vae.encode(x).latent_dist.mean.flatten())
    return float(torch.cat(values).std())


def train_autoencoder(cfg: AutoencoderConfig, resume: str | None = None) -> Path:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from icv_deploy.atomic import atomic_dir

    from .train_data import open_dataset

    if not cfg.data:
        raise IcvError("no training data: pass --data DIR (an `icv-data build` output folder)")
    output = Path(cfg.output)
    done = _latest_checkpoint(output / "checkpoints")
    if resume == "latest" and done is not None and (output / "model" / "config.json").exists() \
            and json.loads((done / STATE_FILE).read_text())["step"] >= cfg.max_steps:
        return output / "model"  # finished before: nothing to resume
    bank = PictureBank(open_dataset(cfg.data))
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        vae = AutoencoderKL.from_pretrained(cfg.init_from, use_safetensors=True)
    else:
        vae = AutoencoderKL(**cfg.architecture)
    trained = vae.parameters()
    if cfg.train_part == "decoder":
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
        trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, weight_decay=0.0)
    step = 0
    checkpoint = _latest_checkpoint(output / "checkpoints") if resume == "latest" else (Path(resume) if resume else None)
    if checkpoint is not None:
        vae.load_state_dict(load_file(checkpoint / "model.safetensors"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        step = json.loads((checkpoint / STATE_FILE).read_text())["step"]
        click.echo(f"resumed from {checkpoint} at step {step}", err=True)
    # Made after the optimizer state is restored: a resumed schedule starts at `step` (its base rate is the
    # optimizer's saved initial_lr).
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps))
                                                 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)),
                                                 last_epoch=step - 1)
    log_file = output / "logs" / "losses.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    vae.train()
    started = time.time()
    progress = tqdm(total=cfg.max_steps, initial=step, desc="autoencoder")
    while step < cfg.max_steps:
        pixels = bank.batch(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            loss, parts = autoencoder_loss(vae, pixels, cfg, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        progress.set_postfix(l1=f"{parts['l1']:.4f}")
        if step % cfg.log_every == 0:
            with open(log_file, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss.item(), **parts, "time": round(time.time() - started, 2)}) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _save_checkpoint(output / "checkpoints", step, vae, optimizer)
    progress.close()

    vae.eval()
    if cfg.train_part == "all":  # a decoder stage keeps the encoder, hence its scaling factor
        vae.register_to_config(scaling_factor=round(1.0 / latent_std(vae, bank, cfg.scaling_samples), 5))
    scaling = vae.config.scaling_factor
    with atomic_dir(output / "model") as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    click.echo(f"autoencoder trained {step} steps (scaling factor {scaling:.5f}); model: {output / 'model'}", err=True)
    return output / "model"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_name", default="demo-vae", help="YAML file or shipped config (training/configs).")
@click.option("--data", help="Training data: an `icv-data build` output folder (inputs and targets).")
@click.option("--output", help="Output folder: checkpoints/, logs/ and the final model/ (diffusers AutoencoderKL).")
@click.option("--max-steps", type=int, help="Optimizer steps.")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16"]), help="bf16 autocast (CPUs with AMX).")
@click.option("--resume", help="'latest' (newest checkpoint in OUTPUT/checkpoints, if any) or a checkpoint folder.")
@debug_option
@one_line_errors
def main(config_name, resume, **options):
    """Train the autoencoder (AutoencoderKL) of a model trained from scratch, such as the bundled demo model.

    \b
      icv-train-vae --config demo-vae --data runs/demo/data --output runs/demo/vae --resume latest
    """
    cfg = load_autoencoder_config(config_name, options)
    train_autoencoder(cfg, resume)


if __name__ == "__main__":
    main()

"""The bundled demo model, trained from scratch with one command (about 1 h 45 min on 2 CPU cores with AMX):

    python -m icv_deploy.training.demo_recipe --work runs/demo            # add --install to replace the bundled one

Every stage is the project's own tool, and every stage resumes: rerun the same command after a crash.
    1. scenes     icv-data synth  --seed 0 --num 4000 --size 128        (ground truth exact by construction)
    2. data       icv-data build  --prompts rephrased --size 128         (all four tasks, balanced)
    3. vae        icv-train-vae   --config demo-vae                      (AutoencoderKL, scale factor 4)
    4. decoder    icv-train-vae   --config demo-vae-decoder              (its decoder alone: outlines, colours)
    5. outlines   icv-train-vae   --config demo-vae-outlines             (the decoder again, heavier outline weight)
    6. unet       icv-train       --config demo --resume latest          (UNet + CLIP text encoder from scratch)
    7. install    the model folder into icv_deploy/assets/demo           (weights stored as fp16)
Status (2026-11-30): the shipped model follows instructions for depth (held-out AbsRel 0.12) and roughly for
segmentation (mIoU 0.12); detection and classification are not learnt yet (icv_deploy/assets/demo/MODEL_CARD.md).
Held-out scenes for the model card come from another seed (`icv-data synth --seed 1`), never from these.
Same seed, same model on the same machine; bf16 autocast is used where the CPU has AMX (else fp32), so
machines of another kind train a slightly different model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from icv_deploy.cli_common import debug_option, one_line_errors

ASSETS = Path(__file__).resolve().parent.parent / "icv_deploy" / "assets"
SCENES, SIZE, SEED = 4000, 128, 0
# Stored in fp16 to fit the package budget (25 MB); diffusers and transformers load them into fp32 modules (the text
# encoder's config.json says dtype float32, which transformers' from_pretrained follows).
FP16_PARTS = ("unet", "vae", "text_encoder")


def cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def install(model: Path, name: str, extra_config: dict) -> Path:
    """Copy a trained model folder into the package as icv_deploy/assets/<name>, atomically."""
    import torch
    from safetensors.torch import load_file, save_file

    from icv_deploy.atomic import atomic_dir, write_json

    card = ASSETS / name / "MODEL_CARD.md"  # written from measurements (icv-eval, benchmarks/steps.py); kept
    card_text = card.read_text() if card.exists() else None
    with atomic_dir(ASSETS / name) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        if card_text is not None:
            (tmp / card.name).write_text(card_text)
        for part in FP16_PARTS:
            for weights in (tmp / part).glob("*.safetensors"):
                tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
                save_file(tensors, weights, metadata={"format": "pt"})
        config = json.loads((tmp / "icv_config.json").read_text())
        write_json(tmp / "icv_config.json", {**config, **extra_config, "random_weights": False})
    return ASSETS / name


def run_recipe(work: Path, install_as: str | None) -> Path:
    from .build import build
    from .config import load_config
    from .synthetic import write_scenes
    from .train import train
    from .train_autoencoder import load_autoencoder_config, train_autoencoder

    scenes, data = work / "synth", work / "data"
    write_scenes(scenes, SCENES, seed=SEED, size=SIZE)
    if not (data / "dataset_info.json").exists():  # a finished build; an unfinished one resumes
        build([f"synth:{scenes}"], data, prompts="rephrased", seed=SEED, size=SIZE, workers=2)
    precision = "bf16" if cpu_has_amx() else "no"
    vae = train_autoencoder(load_autoencoder_config("demo-vae", {"data": str(data), "output": str(work / "vae"),
                                                                 "mixed_precision": precision}), resume="latest")
    vae = train_autoencoder(load_autoencoder_config("demo-vae-decoder", {
        "data": str(data), "output": str(work / "vae-decoder"), "init_from": str(vae), "mixed_precision": precision}),
        resume="latest")
    vae = train_autoencoder(load_autoencoder_config("demo-vae-outlines", {
        "data": str(data), "output": str(work / "vae-outlines"), "init_from": str(vae), "mixed_precision": precision}),
        resume="latest")
    cfg = load_config("demo", {"data": str(data), "output": str(work / "unet"), "base_vae": str(vae),
                               "mixed_precision": precision})
    result = train(cfg, resume="latest")
    if install_as:
        return install(result.model_dir, install_as, {"trained_with": "training/demo_recipe.py",
                                                       "mixed_precision": cfg.mixed_precision})
    return result.model_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--work", type=click.Path(path_type=Path), default=Path("runs/demo"), help="Working folder of all stages.")
@click.option("--install", "install_as", flag_value="demo", default=None,
              help="Replace the bundled demo model (icv_deploy/assets/demo) with the result.")
@debug_option
@one_line_errors
def main(work, install_as):
    """Retrain the bundled demo model from scratch: scenes, data, autoencoder, UNet + text encoder.

    Resumes every stage; rerun the same command after an interruption.
    """
    click.echo(f"model: {run_recipe(work, install_as)}")


if __name__ == "__main__":
    main()

"""The bundled demo model, trained from scratch with one command (hours on 2 CPU cores; times in its MODEL_CARD.md):

    python -m icv_deploy.training.demo_recipe --work runs/demo            # add --install to replace the bundled one

Every stage is the project's own tool, and every stage resumes: rerun the same command after a crash.
    1. scenes     icv-data synth  --seed 0 --num 4000 --size 128        (ground truth exact by construction)
    2. data       icv-data build  --prompts rephrased --size 128         (all four tasks, balanced), and the same
                                  with --box-width 3 (WORK/data-wide)    with detection outlines 3 px wide
    3. vae        icv-train-vae   --config demo-vae                      (AutoencoderKL, scale factor 4)
    4. decoder    icv-train-vae   --config demo-vae-decoder              (its decoder alone: outlines, colours)
    5. outlines   icv-train-vae   --config demo-vae-outlines             (the decoder again, heavier outline weight)
   5b. boxes      icv-train-vae   --config demo-vae-boxes                (the whole autoencoder, encoder included:
                                                                          then detection outlines survive it)
    6. unet       icv-train       --config demo --resume latest          (UNet + CLIP text encoder from scratch, with
                                                                          training-only recognition terms)
    7. masks      icv-train       --config demo-masks                    (stage 6's model again, with a mask loss)
       answers    icv-train       --config demo-answers                  (then with a yes/no colour loss too)
       phrasings  icv-train       --config demo-phrasings                (then half the instructions from the
                                                                          phrasing grammar: training/prompts/)
       wide       icv-train       --config demo-wide-outlines            (then on WORK/data-wide: 3 px outlines)
       install    the model folder into icv_deploy/assets/demo           (with --install; weights stored as fp16)
    8. one-step   icv-train       --config demo-1step                    (with --one-step: the one-pass demo-1step,
                                                                          fine-tuned from stage 7's model)
    9. masks      icv-train       --config demo-1step-masks              (stage 8's model again, with a mask loss)
       wide       icv-train       --config demo-1step-wide-outlines      (then on WORK/data-wide, with an outline
                  icv-train       --config demo-1step-wide-outlines-2     loss, and 400 steps more)
       phrasings  icv-train       --config demo-1step-phrasings          (then half the instructions from the
                                                                          phrasing grammar)
   10. yes/no     (an experiment, `--stage 10` only; its result was not shipped) icv-data build --task classification
                  --colors blue,black --yes-radius R, then icv-train --config demo-1step-yes-no, for R = 0, 8, 24, 56,
                  96 and the solid card (yes/no answers taught through the mask, training/yes_no_curriculum.py), then
                  icv-train --config demo-1step-yes-no-card (every task, phrasing and colour pair, the solid card)
`--one-step-only --install` runs stages 8 and 9 alone from the bundled demo model; `--stage 7 --install` runs stage 7
(its four runs) alone from the bundled demo, `--stage 9 --install` stage 9 (its four runs) alone from the bundled
demo-1step. How the shipped models were made: the demo's stages 1-5 on 2026-11-30, its stages 5b to 7's phrasings run
on 2026-12-02 (on a 2-core AMD EPYC with AVX-512 BF16, bf16 autocast, 1 h 31 min), its wide-outlines run on
2026-12-03 (25 min); demo-1step's stages 8 and 9's masks run on 2026-12-03 morning from the demo of 2026-12-02, its two
wide-outline runs that afternoon (43 min), its phrasings run that evening (21 min).
Status (all 2,672 held-out queries, icv_deploy/assets/*/MODEL_CARD.md): the shipped demo follows instructions for depth
(AbsRel 0.110) and roughly for segmentation (mIoU 0.56) and detection (mAP@0.5 0.33); classification is at chance. The
shipped demo-1step reaches mIoU 0.70 (0.65 under phrasings written blind), mAP@0.5 0.60 and AbsRel 0.105 in one pass.
Held-out scenes for the model card come from another seed (`icv-data synth --seed 1`), never from these.
Same seed, same model on the same machine; bf16 autocast is used where the CPU computes bf16 natively (AMX or
AVX-512 BF16; else fp32), so machines of another kind train a slightly different model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click

from icv_deploy.cli_common import debug_option, one_line_errors
from icv_deploy.errors import IcvError

ASSETS = Path(__file__).resolve().parent.parent / "icv_deploy" / "assets"
SCENES, SIZE, SEED = 4000, 128, 0
# The last runs of stages 7 and 9 train on detection outlines 3 px wide at 128 px (WORK/data-wide), not the contract's
# 1 px: a 1 px line is a quarter of the autoencoder's 4 x 4 pixel cell, and a one-pass answer unsure of its place by a
# pixel paints it a third as blue (docs/DESIGN.md 6). The models record the width (icv_config.json box_line_fraction).
BOX_WIDTH = 3
# Stored in fp16 to fit the package budget (25 MB); diffusers and transformers load them into fp32 modules (the text
# encoder's config.json says dtype float32, which transformers' from_pretrained follows).
FP16_PARTS = ("unet", "vae", "text_encoder")


def training_precision() -> str:
    """bf16 autocast where the CPU computes in bf16 natively (AMX: about 2x faster; AVX-512 BF16: a UNet step 1.4-1.5x
    faster, 2-core AMD EPYC 2026-12-02), fp32 elsewhere, where emulated bf16 would be slower."""
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def install(model: Path, name: str, extra_config: dict) -> Path:
    """Copy a trained model folder into the package as icv_deploy/assets/<name>, atomically."""
    import torch
    from safetensors.torch import load_file, save_file

    from icv_deploy.atomic import atomic_dir, write_json
    from icv_deploy.model_files import model_config

    card = ASSETS / name / "MODEL_CARD.md"  # written from measurements (icv-eval, benchmarks/steps.py); kept
    card_text = card.read_text() if card.exists() else None
    caveat = model_config(ASSETS / name).get("caveat")  # kept too: written from the same measurements
    with atomic_dir(ASSETS / name) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        if card_text is not None:
            (tmp / card.name).write_text(card_text)
        for part_config in tmp.glob("*/config.json"):  # diffusers records the folder it loaded from: a local path
            write_json(part_config, {k: v for k, v in json.loads(part_config.read_text()).items() if k != "_name_or_path"})
        for part in FP16_PARTS:
            for weights in (tmp / part).glob("*.safetensors"):
                tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
                save_file(tensors, weights, metadata={"format": "pt"})
        config = json.loads((tmp / "icv_config.json").read_text())
        write_json(tmp / "icv_config.json", {**config, **extra_config, "random_weights": False,
                                             **({"caveat": caveat} if caveat else {})})
    return ASSETS / name


def prepare_data(work: Path) -> Path:
    """Stages 1 and 2: WORK/synth (scenes), WORK/data (the training examples) and WORK/data-wide (the same, detection
    outlines BOX_WIDTH pixels wide); returns WORK."""
    from .build import build
    from .synthetic import write_scenes

    scenes = work / "synth"
    write_scenes(scenes, SCENES, seed=SEED, size=SIZE)
    # an unfinished build resumes, a finished one with these options is kept, one with others is an error
    for folder, box_width in (("data", None), ("data-wide", BOX_WIDTH)):
        build([f"synth:{scenes}"], work / folder, prompts="rephrased", seed=SEED, size=SIZE, workers=2,
              box_width=box_width)
    return work


def run_recipe(work: Path, install_as: str | None, one_step: bool = False) -> Path:
    from .config import load_config
    from .train import train
    from .train_autoencoder import load_autoencoder_config, train_autoencoder

    data = prepare_data(work) / "data"
    precision = training_precision()
    vae = train_autoencoder(load_autoencoder_config("demo-vae", {"data": str(data), "output": str(work / "vae"),
                                                                 "mixed_precision": precision}), resume="latest")
    vae = train_autoencoder(load_autoencoder_config("demo-vae-decoder", {
        "data": str(data), "output": str(work / "vae-decoder"), "init_from": str(vae), "mixed_precision": precision}),
        resume="latest")
    vae = train_autoencoder(load_autoencoder_config("demo-vae-outlines", {
        "data": str(data), "output": str(work / "vae-outlines"), "init_from": str(vae), "mixed_precision": precision}),
        resume="latest")
    vae = train_autoencoder(load_autoencoder_config("demo-vae-boxes", {
        "data": str(data), "output": str(work / "vae-boxes"), "init_from": str(vae), "mixed_precision": precision}),
        resume="latest")
    cfg = load_config("demo", {"data": str(data), "output": str(work / "unet"), "base_vae": str(vae),
                               "mixed_precision": precision})
    model = run_masks(work, train(cfg, resume="latest").model_dir, install_as, precision,
                      latents=work / "unet" / "latent-cache")
    if one_step:
        return run_one_step(work, model, install_as and f"{install_as}-1step", precision)
    return model


# Stage 7's runs: (config, output folder under WORK, data folder under WORK)
MASK_STAGES = (("demo-masks", "masks", "data"), ("demo-answers", "answers", "data"),
               ("demo-phrasings", "phrasings", "data"), ("demo-wide-outlines", "wide-outlines", "data-wide"))


def run_masks(work: Path, base: Path | str, install_as: str | None, precision: str, latents: Path | None = None,
              how: str = "") -> Path:
    """Stage 7: the sampled demo fine-tuned with the decoded mask loss (training/configs/demo-masks.yaml), then with
    the decoded answer-colour loss too (demo-answers.yaml), then with half its instructions from the phrasing grammar
    (demo-phrasings.yaml), then on 3 px outlines (demo-wide-outlines.yaml). `latents`: stage 6's latent cache of
    WORK/data (train_in_order)."""
    model = train_in_order(work, MASK_STAGES, base, precision, latents)
    if install_as:
        model = install(model, install_as, {"trained_with": f"training/demo_recipe.py{how}", "mixed_precision": precision})
    return model


def train_in_order(work: Path, runs, model: Path | str, precision: str, latents: Path | None = None) -> Path:
    """icv-train each of `runs` ((config, output folder under WORK, data folder under WORK)) from the model of the one
    before, starting from `model`; returns the last model. A run links the latent cache of the run before it when both
    train on the same data (`latents`: one of WORK/data for the first run) rather than encoding it again:
    load_or_build_cache checks the cache's key (autoencoder, data) and rebuilds it if it does not match."""
    from .config import load_config
    from .latent_cache import CACHE_FILE
    from .train import train

    data_before = "data"
    for config, folder, data in runs:
        output = work / folder
        if data != data_before:
            latents = None  # other targets: encoded anew
        cached, copy = (latents / CACHE_FILE if latents else None), output / "latent-cache" / CACHE_FILE
        if cached is not None and cached.exists() and not copy.exists():
            share_file(cached, copy)
        cfg = load_config(config, {"data": str(work / data), "output": str(output), "base_model": str(model),
                                   "mixed_precision": precision})
        model = train(cfg, resume="latest").model_dir
        latents, data_before = output / "latent-cache", data
    return model


def share_file(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (a copy across file systems), atomically. The caches are only ever
    replaced whole (atomic_path), never written in place, so two runs can share one file's 800 MB."""
    from icv_deploy.atomic import atomic_path

    with atomic_path(target, suffix=source.suffix) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


# The one-pass stages: (number, config, output folder under WORK, data folder under WORK)
ONE_STEP_STAGES = ((8, "demo-1step", "one-step", "data"), (9, "demo-1step-masks", "one-step-masks", "data"),
                   (9, "demo-1step-wide-outlines", "one-step-wide-outlines", "data-wide"),
                   (9, "demo-1step-wide-outlines-2", "one-step-wide-outlines-2", "data-wide"),
                   (9, "demo-1step-phrasings", "one-step-phrasings", "data-wide"))
# Stage 10, an experiment that only `--stage 10` runs (it is no part of the shipped models): its curriculum, before its
# last run (demo-1step-yes-no-card), as (radius in pixels the "present" answer grows the mask by, None for the solid
# card; steps). Its instructions are the paper's template in one colour pair: with a colour pair drawn per example
# and the pool's phrasings, the first two phases painted the "absent" colour everywhere (ROC AUC 0.50). With one pair
# presence is learnt (held-out AUC 0.88 at R = 96), but the solid card loses part of it, the last run does not carry
# it over to the other phrasings and colours, and the 670 steps cost the masks and depth more than the last run's
# 300 steps of every task give back (benchmarks/results/yes-no-curriculum-2026-12-03/).
YES_NO_STAGE = 10
YES_NO_PHASES = ((0, 120), (8, 100), (24, 100), (56, 100), (96, 100), (None, 150))
YES_NO_COLORS = ("blue", "black")


def run_one_step(work: Path, base: Path | str, install_as: str | None, precision: str, only: int | None = None,
                 on: str | None = None) -> Path:
    """Stages 8 and 9: fine-tune a demo model into the one-pass `demo-1step` (training/configs/demo-1step.yaml), then
    with the mask loss (demo-1step-masks.yaml), then on 3 px outlines with an outline loss (demo-1step-wide-outlines
    and -2), then with half its instructions from the phrasing grammar (demo-1step-phrasings); `only`: that stage
    alone, `base` being the one-pass model of the stage before; only = YES_NO_STAGE: the yes/no experiment
    (run_yes_no)."""
    model = run_yes_no(work, base, precision) if only == YES_NO_STAGE else base
    runs = [(config, output, data) for number, config, output, data in ONE_STEP_STAGES if only in (None, number)]
    model = train_in_order(work, runs, model, precision)
    if install_as:
        how = f"--stage {only} (on {on or 'the bundled demo-1step'})" if only else "--one-step"
        model = install(model, install_as, {"trained_with": f"training/demo_recipe.py {how}",
                                            "mixed_precision": precision})
    return model


def run_yes_no(work: Path, base: Path | str, precision: str) -> Path:
    """Stage 10: per YES_NO_PHASES radius, every yes/no query of the recipe's scenes, in the paper's template and
    YES_NO_COLORS, built with their "present" answers as the grown mask (WORK/yes-no-data-rR; rcard for the solid
    card), and a demo-1step-yes-no run on them from the phase before's model (WORK/yes-no-rR); then a
    demo-1step-yes-no-card run on the recipe's data (WORK/yes-no-card)."""
    from .build import build
    from .config import load_config
    from .train import train

    model = base
    for radius, steps in YES_NO_PHASES:
        name = "card" if radius is None else radius
        data = work / f"yes-no-data-r{name}"
        # an unfinished build resumes, a finished one with these options is kept, one with others is an error
        build([f"synth:{work / 'synth'}"], data, prompts="fixed", seed=SEED, size=SIZE, tasks=["classification"],
              yes_radius=radius, colors=YES_NO_COLORS, workers=2)
        cfg = load_config("demo-1step-yes-no", {"data": str(data), "output": str(work / f"yes-no-r{name}"),
                                                 "base_model": str(model), "max_steps": steps,
                                                 "mixed_precision": precision})
        model = train(cfg, resume="latest").model_dir
    cfg = load_config("demo-1step-yes-no-card", {"data": str(work / "data"), "output": str(work / "yes-no-card"),
                                                  "base_model": str(model), "mixed_precision": precision})
    return train(cfg, resume="latest").model_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--work", type=click.Path(path_type=Path), default=Path("runs/demo"), help="Working folder of all stages.")
@click.option("--install", "install_as", flag_value="demo", default=None,
              help="Replace the bundled demo model (icv_deploy/assets/demo) with the result.")
@click.option("--one-step", is_flag=True,
              help="Then fine-tune it into the one-pass model (stages 8 and 9, demo-1step; with --install, replace that too).")
@click.option("--one-step-only", is_flag=True,
              help="Only stages 8 and 9, from the bundled demo model (needs WORK/data and WORK/data-wide from stage 2, "
                   "which it builds if missing).")
@click.option("--stage", type=click.Choice(["7", "9", "10"]), default=None,
              help="Only this fine-tuning stage: 7 (masks, answers, phrasings, then wide outlines) from the bundled demo "
                   "model, 9 from the bundled demo-1step, 10 (the yes/no experiment; not shipped) from it too.")
@click.option("--base", default=None, metavar="MODEL",
              help="With --stage: the model folder (or bundled name) the stage starts from, e.g. a stage-6 model "
                   "[default: the bundled one named above].")
@debug_option
@one_line_errors
def main(work, install_as, one_step, one_step_only, stage, base):
    """Retrain the bundled demo model from scratch: scenes, data, autoencoder, UNet + text encoder, their mask,
    answer and phrasing runs (and, with --one-step, the one-pass demo-1step from it).

    Resumes every stage; rerun the same command after an interruption.
    """
    if base is not None and not stage:
        raise IcvError("--base goes with --stage (the whole recipe starts from scratch)")
    if stage == "7":
        on = f"on {base}" if base else "on the bundled demo"
        model = run_masks(prepare_data(work), base or "demo", install_as, training_precision(), how=f" --stage 7 ({on})")
    elif one_step_only or stage:
        model = run_one_step(prepare_data(work), base or ("demo-1step" if stage else "demo"),
                             install_as and f"{install_as}-1step", training_precision(), int(stage) if stage else None,
                             on=base)
    else:
        model = run_recipe(work, install_as, one_step)
    click.echo(f"model: {model}")


if __name__ == "__main__":
    main()

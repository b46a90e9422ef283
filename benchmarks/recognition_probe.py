"""Can the UNet see which categories a picture holds? A linear probe of its features (issue 12)

    python benchmarks/recognition_probe.py --model demo --train synth:runs/demo/synth --data synth:HELDOUT --out OUT

answer_anatomy.py found the demo's masks blind to the category word and its yes/no answers near chance. Both tasks
need the UNet to tell a cube from a cone; depth and "every object" masks do not. This asks whether its features can:

    probe      the model's UNet runs once per picture as the sampler's first step does (pure noise at the first
               timestep of the trailing schedule, the picture's latent, an instruction that names no category), and
               each block's output is pooled over the grid (mean and max). One logistic regression per category
               (scikit-learn), fitted on --train scenes, says on --data scenes whether the category is in the picture.
               Scored against the base rate (always the majority answer) and, with --random-control, against the
               same UNet at random initialisation: features no better than random ones have learnt nothing of shape.
    reference  (--reference-steps N) a small CNN shaped like the UNet's down path, trained from scratch for N steps
               on the same --train scenes' latents (the model's own VAE) to answer the same question: what the data
               allows a dedicated recogniser, so a poor probe can be told apart from data too small to learn from.

OUT/recognition.json (accuracies, settings, machine) and OUT/recognition.md (the tables).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import machine_description, save_report  # noqa: E402

from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402
from icv_deploy.errors import IcvError  # noqa: E402

BLOCKS = ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0")
NEUTRAL_INSTRUCTION = "Create a monocular depth map"  # the paper's depth template: it names no category


def synth_scenes(source: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(pictures (N, H, W, 3) uint8, presence (N, categories) bool, category names) of an `icv-data synth` folder."""
    from icv_deploy.training.build import parse_source
    from icv_deploy.training.datasets.base import read_rgb
    from icv_deploy.training.datasets.synth import SynthAdapter

    kind, root, split = parse_source(source)
    if kind != "synth":
        raise IcvError(f"{source}: the probe needs synthetic scenes (synth:ROOT), whose annotations list every object")
    scenes = SynthAdapter(root, split)
    ids = scenes.ids[:limit]
    if not ids:
        raise IcvError(f"{source}: no scenes")
    pictures = np.stack([read_rgb(scenes.root / "rgb" / f"{i}.png") for i in ids])
    presence = np.array([[any(o["category"] == c for o in scenes.annotation(i)["objects"]) for c in scenes.categories]
                         for i in ids])
    return pictures, presence, scenes.categories


@torch.no_grad()
def image_latents(vae, pictures: np.ndarray, batch: int = 64) -> torch.Tensor:
    """The pipeline's image conditioning (DESIGN.md 3): the posterior mode of the picture in [-1, 1], not scaled."""
    out = []
    for start in range(0, len(pictures), batch):
        x = torch.from_numpy(pictures[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(vae.encode(x.to(vae.dtype)).latent_dist.mode().float())
    return torch.cat(out)


@torch.no_grad()
def pooled_features(unet, latents: torch.Tensor, text: torch.Tensor, timestep: int, blocks=BLOCKS,
                    batch: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """{block: (N, 2 C)}: each block's output, mean- and max-pooled over the grid, for the UNet's first sampling step
    (noise from `seed`, the image latents, the instruction's text embedding (1, 77, D))."""
    modules = dict(unet.named_modules())
    captured, feats = {}, {name: [] for name in blocks}

    def keep(name):
        def hook(module, args, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    hooks = [modules[name].register_forward_hook(keep(name)) for name in blocks]
    generator = torch.Generator().manual_seed(seed)
    try:
        for start in range(0, len(latents), batch):
            image = latents[start:start + batch]
            noise = torch.randn(image.shape, generator=generator)
            unet(torch.cat([noise, image], 1).to(unet.dtype), timestep, text.expand(len(image), -1, -1).to(unet.dtype))
            for name in blocks:
                f = captured[name].float()
                feats[name].append(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {name: np.concatenate(parts) for name, parts in feats.items()}


def probe_accuracy(train_x, train_y, test_x, test_y) -> list[float]:
    """Held-out accuracy per category of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for c in range(train_y.shape[1]):
        if len(set(train_y[:, c])) < 2:  # a category always (or never) present: the majority answer is the probe
            scores.append(float(np.mean(test_y[:, c] == train_y[0, c])))
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y[:, c])
        scores.append(float(probe.score(test_x, test_y[:, c])))
    return scores


def reference_cnn(channels: int, categories: int, width: int = 64) -> torch.nn.Module:
    """The UNet's down path in miniature (conv, two stride-2 stages, width 64 -> 128), max-pooled to one logit per
    category."""
    nn = torch.nn

    def stage(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(16, cout), nn.SiLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, stride=stride), nn.GroupNorm(16, cout), nn.SiLU())
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), stage(width, width, 2), stage(width, 2 * width, 2),
                         stage(2 * width, 2 * width, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, categories))


def train_reference(train_x, train_y, test_x, test_y, steps: int, report_every: int = 250, batch: int = 64,
                    seed: int = 0, progress: bool = True) -> list[dict]:
    """Trains reference_cnn from scratch (AdamW 1e-3, BCE); [{"step", "train_loss", "accuracy": per category}] every
    `report_every` steps and at the end, accuracy on the test set."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = reference_cnn(train_x.shape[1], train_y.shape[1])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    train_y, test_y = torch.as_tensor(train_y, dtype=torch.float32), torch.as_tensor(test_y, dtype=torch.float32)
    generator, curve = torch.Generator().manual_seed(seed), []
    for step in tqdm(range(1, steps + 1), desc="reference CNN", disable=not progress):
        idx = torch.randint(0, len(train_x), (batch,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(train_x[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % report_every == 0 or step == steps:
            with torch.no_grad():
                accuracy = ((net(test_x) > 0).float() == test_y).float().mean(0)
            curve.append({"step": step, "train_loss": round(loss.item(), 4), "accuracy": accuracy.tolist()})
    return curve


def markdown(doc: dict) -> str:
    names = doc["categories"]

    def row(label, scores):
        return f"| {label} | " + " | ".join(f"{s:.3f}" for s in scores) + f" | **{np.mean(scores):.3f}** |"

    lines = [f"# Recognition probe: {doc['model']}", "",
             f"Is the category in the picture? {doc['test_scenes']} scenes of {doc['data']}; probes fitted on "
             f"{doc['probe_scenes']} scenes of {doc['train']}. Instruction: \"{doc['instruction']}\", timestep "
             f"{doc['timestep']}. Machine: {doc['machine']['cpu']}.", "",
             "| features | " + " | ".join(names) + " | mean |", "| --- |" + " ---: |" * (len(names) + 1),
             row("base rate (the majority answer)", doc["base_rate"])]
    for kind in ("trained", "random"):
        for block, scores in doc["probe"].get(kind, {}).items():
            row_label = f"{block}, {'trained UNet' if kind == 'trained' else 'same UNet, random initialisation'}"
            lines.append(row(row_label, scores))
    if doc.get("reference"):
        lines += ["", f"Reference CNN trained from scratch on {doc['reference_scenes']} scenes' latents (batch 64):",
                  "",
                  "| steps | train loss | " + " | ".join(names) + " | mean |",
                  "| ---: | ---: |" + " ---: |" * (len(names) + 1)]
        lines += [f"| {p['step']} | {p['train_loss']:.3f} | " + " | ".join(f"{a:.3f}" for a in p["accuracy"])
                  + f" | **{np.mean(p['accuracy']):.3f}** |" for p in doc["reference"]]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="A bundled model (demo, demo-1step) or a model folder [default: demo].")
@click.option("--train", "train_source", required=True, metavar="synth:ROOT",
              help="Scenes to fit the probes on (the training scenes, e.g. runs/demo/synth).")
@click.option("--reference-scenes", type=click.IntRange(10), default=4000, show_default=True,
              help="How many of them the reference CNN trains on (the first N).")
@click.option("--probe-scenes", type=click.IntRange(10), default=1500, show_default=True,
              help="How many of them the probes are fitted on (the first N).")
@click.option("--data", required=True, metavar="synth:ROOT", help="Held-out scenes (`icv-data synth --seed 1`).")
@click.option("--limit", type=click.IntRange(10), default=300, show_default=True, help="At most N held-out scenes.")
@click.option("--random-control/--no-random-control", default=True, show_default=True,
              help="Probe the same UNet at random initialisation too.")
@click.option("--reference-steps", type=click.IntRange(0), default=0, show_default=True,
              help="Train the reference CNN for N steps (0: not at all).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@debug_option
@one_line_errors
def main(model, train_source, reference_scenes, probe_scenes, data, limit, random_control, reference_steps, out):
    """Probe a model's UNet features for which categories a picture holds: a logistic regression per category on
    pooled block outputs at the first sampling step, fitted on --train scenes and scored on --data scenes, against
    the base rate and the same UNet at random initialisation; optionally a small CNN trained from scratch on the same
    scenes as a reference of what the data allows. Writes OUT/recognition.json and OUT/recognition.md."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from icv_deploy.model_files import resolve_model
    from icv_deploy.schedules import make_schedule

    folder = resolve_model(model)
    wanted = max(reference_scenes, probe_scenes) if reference_steps else probe_scenes
    train_pictures, train_y, categories = synth_scenes(train_source, wanted)
    test_pictures, test_y, test_categories = synth_scenes(data, limit)
    if categories != test_categories:
        raise IcvError(f"--train has categories {categories}, --data {test_categories}")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").float().eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").float().eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").float().eval()
    with torch.no_grad():
        ids = tokenizer([NEUTRAL_INSTRUCTION], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        text = text_encoder(ids)[0]
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    timestep = int(make_schedule(scheduler_config, 1, "trailing").timesteps[0])  # the first step: pure noise
    train_latents, test_latents = image_latents(vae, train_pictures), image_latents(vae, test_pictures)

    unets = {"trained": unet}
    if random_control:
        torch.manual_seed(0)
        unets["random"] = UNet2DConditionModel.from_config(unet.config).eval()
    probe = {}
    for kind, net in unets.items():
        train_f = pooled_features(net, train_latents[:probe_scenes], text, timestep)
        test_f = pooled_features(net, test_latents, text, timestep)
        probe[kind] = {block: probe_accuracy(train_f[block], train_y[:probe_scenes], test_f[block], test_y)
                       for block in BLOCKS}
    reference = []
    if reference_steps:
        reference = train_reference(train_latents[:reference_scenes], train_y[:reference_scenes], test_latents, test_y,
                                    reference_steps)
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": str(folder),
           "train": train_source, "probe_scenes": min(probe_scenes, len(train_y)),
           "reference_scenes": min(reference_scenes, len(train_y)) if reference_steps else 0,
           "data": data, "test_scenes": len(test_y),
           "categories": list(categories), "instruction": NEUTRAL_INSTRUCTION, "timestep": timestep,
           "base_rate": np.maximum(test_y.mean(0), 1 - test_y.mean(0)).tolist(), "probe": probe,
           "reference": reference, "machine": machine_description("cpu")}
    save_report(out, "recognition", doc, markdown(doc))


if __name__ == "__main__":
    main()

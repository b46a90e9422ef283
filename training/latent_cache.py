"""Latents encoded once: the frozen VAE's view of every training example, so a step costs only the UNet.

With a frozen VAE, encoding the same picture at every epoch repeats identical work; on a CPU it costs more than
the small UNet of the demo model. The cache holds, per example and per flip (plain, and mirrored when the config flips):
    image_latents  the input's posterior mode, NOT scaled (what the pipeline feeds the UNet; DESIGN.md 3)
    target_mean, target_std  the target's posterior, so each step still draws a fresh latent sample
Only flips survive as augmentation (resize and crop would need re-encoding): `cache_latents` asks for
resize_min == resize_max == resolution. The file is keyed by the VAE's weights, the data and the resolution,
written atomically, and rebuilt when any of them changes; an interrupted build resumes from its last part file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from icv_deploy.atomic import atomic_path
from icv_deploy.tasks import TASKS

from .augment import example_rng, to_tensor
from .train_data import tokenize

CACHE_FILE = "latents.safetensors"


def cache_key(vae, rows, resolution: int, flips: int, autocast) -> str:
    """Everything the cached latents depend on: the encoder's weights (not the decoder's: a decoder fine-tuned
    later leaves the latents as they are), the data, the size, the flips and the precision."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if not name.startswith(("encoder.", "quant_conv.")):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(json.dumps({"rows": len(rows), "fingerprint": getattr(rows, "_fingerprint", None),
                              "resolution": resolution, "flips": flips, "autocast": str(autocast)}).encode())
    return digest.hexdigest()


@torch.no_grad()
def _encode(vae, pictures: list[Image.Image], resolution: int, flips: int, autocast: torch.dtype | None):
    size = (resolution, resolution)
    x = torch.stack([to_tensor(p.convert("RGB").resize(size, Image.Resampling.LANCZOS)) for p in pictures])
    x = torch.cat([x, x.flip(-1)][:flips])  # plain, then mirrored
    with torch.autocast(vae.device.type, dtype=autocast, enabled=autocast is not None):
        posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    n = len(pictures)
    split = lambda t: torch.stack(t.float().cpu().split(n), dim=1)  # noqa: E731  (N, flips, C, h, w)
    return split(posterior.mode()), split(posterior.mean), split(posterior.std)


def _encode_once(vae, pictures: list[Image.Image], encoded: dict, resolution: int, flips: int, autocast):
    """_encode, for the pictures not in `encoded` (picture digest -> (mode, mean, std) per picture) only."""
    digests = [hashlib.sha256(p.tobytes() + repr((p.mode, p.size)).encode()).digest() for p in pictures]
    new = {digest: picture for digest, picture in zip(digests, pictures) if digest not in encoded}
    if new:
        fresh = _encode(vae, list(new.values()), resolution, flips, autocast)
        encoded.update({digest: tuple(t[i] for t in fresh) for i, digest in enumerate(new)})
    return tuple(torch.stack([encoded[digest][j] for digest in digests]) for j in range(3))


def load_or_build_cache(folder: Path, vae, rows, resolution: int, flip: bool = True, autocast: torch.dtype | None = None,
                        batch: int = 64, progress: bool = True, part_rows: int = 4096) -> dict:
    """{"image_latents", "target_mean", "target_std"}: tensors (N, flips, C, h, w), built on first use.
    `autocast` (e.g. bf16, as the training's mixed precision) halves the time of building it on CPUs with AMX.
    The build resumes: every `part_rows` rows are written (atomically) as a part file under FOLDER/latents.parts/,
    which a rerun with the same key reads instead of encoding again; the parts go once the whole file is written."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    flips = 2 if flip else 1
    key = cache_key(vae, rows, resolution, flips, autocast)
    path = Path(folder) / CACHE_FILE
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") == key:
                return load_file(str(path))
    parts_dir = Path(folder) / "latents.parts"
    names = ("image_latents", "target_mean", "target_std")
    parts = {name: [] for name in names}
    inputs, targets = {}, {}  # picture digest -> its encodings: every task of a scene has the same input picture
    bar = tqdm(total=len(rows), desc="caching latents", unit="example", disable=not progress)
    for first in range(0, len(rows), part_rows):
        part_path = parts_dir / f"{key[:24]}-{first:09d}.safetensors"
        if part_path.exists():  # written by an interrupted build of the same cache
            part = load_file(str(part_path))
            bar.update(len(part["target_mean"]))
        else:
            chunks = {name: [] for name in names}
            for start in range(first, min(first + part_rows, len(rows)), batch):
                chunk = rows[start:min(start + batch, first + part_rows)]
                image_latents, _, _ = _encode_once(vae, chunk["input_image"], inputs, resolution, flips, autocast)
                _, mean, std = _encode_once(vae, chunk["edited_image"], targets, resolution, flips, autocast)
                for name, value in zip(names, (image_latents, mean, std)):
                    chunks[name].append(value)
                bar.update(len(mean))
            part = {name: torch.cat(values).contiguous() for name, values in chunks.items()}
            parts_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(part_path, suffix=".safetensors") as tmp:
                save_file(part, str(tmp))
        for name in names:
            parts[name].append(part[name])
    bar.close()
    tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"key": key})
    shutil.rmtree(parts_dir, ignore_errors=True)  # its parts (and any of an older key) are in the whole file now
    return tensors


class CachedLatentExamples(torch.utils.data.Dataset):
    """Examples as cached latents plus instruction tokens; the flip of each example is drawn per epoch.
    With `target_pixels` (a resolution), the target picture too, in [-1, 1] and flipped alike, its task's index in
    icv_deploy.tasks.TASKS, and with `answer_colors` each instruction's two classification colours (present, absent;
    zeros for the other tasks) as the runtime reads them; all for the losses on decoded pixels
    (training/one_pass_loss.py)."""

    def __init__(self, rows, cache: dict, tokenizer, flip: bool, seed: int, target_pixels: int | None = None,
                 negatives=None, scene_labels=None, answer_colors: bool = False, unknown_tokens=None, rephrase=None):
        self.cache, self.flip, self.seed, self.epoch = cache, flip, seed, 0
        self.scene_labels = scene_labels  # a SceneLabels (training/scene_recognition.py), or None
        self.negatives = negatives  # an AbsentCategoryNegatives (training/absent_negatives.py), or None
        self.input_ids = tokenize(tokenizer, list(rows["edit_prompt"]))
        self.insertion = None  # an UnknownTokenInsertion (training/unknown_tokens.py), or None
        if unknown_tokens is not None and unknown_tokens.share > 0:
            from .unknown_tokens import UnknownTokenInsertion

            self.insertion = UnknownTokenInsertion(unknown_tokens, self.input_ids, tokenizer)
        rephrasing = rephrase is not None and rephrase.share > 0
        wants_colors = bool(target_pixels and answer_colors)
        # routed once for both the colour term and the rephrasing, which keeps each instruction's colours
        color_names = classification_color_names(rows) if rephrasing or wants_colors else None
        self.rephrasing = None  # a GrammarRephrasing (training/phrasing_grammar.py), or None
        if rephrasing:
            from .phrasing_grammar import GrammarRephrasing

            self.rephrasing = GrammarRephrasing(rephrase, rows, tokenizer, color_names)
        # only the target column: indexing the whole row would decode the input picture too
        self.targets = rows.select_columns(["edited_image"]) if target_pixels else None
        self.target_pixels = target_pixels
        self.task_ids = torch.tensor([TASKS.index(task) for task in rows["task"]]) if target_pixels else None
        self.answer_colors = classification_colors(color_names) if wants_colors else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        rng = example_rng(self.seed, self.epoch, index)
        mirrored = int(self.flip and rng.random() < 0.5)
        example = {name: self.cache[name][index, mirrored] for name in ("image_latents", "target_mean", "target_std")}
        example["input_ids"] = self.input_ids[index]
        if self.rephrasing is not None:  # first: the negatives below swap the category word in whatever it draws
            example["input_ids"] = self.rephrasing.apply(example["input_ids"], index, rng)
        if self.target_pixels:
            size = (self.target_pixels, self.target_pixels)
            pixels = to_tensor(self.targets[index]["edited_image"].convert("RGB").resize(size, Image.Resampling.LANCZOS))
            example["target_pixels"] = pixels.flip(-1) if mirrored else pixels
            example["task_id"] = self.task_ids[index]
            if self.answer_colors is not None:
                example["answer_colors"] = self.answer_colors[index]
        if self.scene_labels is not None:
            example["scene_shares"] = self.scene_labels(index, bool(mirrored))
        if self.negatives is not None:
            example = self.negatives.apply(example, index, rng, mirrored)
        if self.insertion is not None:
            example["input_ids"] = self.insertion.apply(example["input_ids"], rng)
        return example


def classification_color_names(rows) -> list[tuple[str, str] | None]:
    """Each classification example's colour if present and colour if absent, as the runtime's router reads them from
    its instruction (icv_deploy.tasks.routing: blue and black where it names none); None for the other tasks."""
    from icv_deploy.tasks.routing import route

    names = []
    for prompt, task in zip(rows["edit_prompt"], rows["task"]):
        named = route(prompt, task="classification") if task == "classification" else None
        names.append((named.color_if_present, named.color_if_absent) if named else None)
    return names


def classification_colors(names: list[tuple[str, str] | None]) -> torch.Tensor:
    """(n, 2, 3) in [-1, 1]: the colours of classification_color_names as RGB; zeros for the other tasks."""
    from icv_deploy.tasks.encodings import COLORS

    colors = torch.zeros(len(names), 2, 3)
    for i, pair in enumerate(names):
        for j, name in enumerate(pair or ()):
            colors[i, j] = torch.tensor(COLORS[name], dtype=torch.float32) / 127.5 - 1
    return colors

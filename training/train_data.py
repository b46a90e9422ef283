"""What the training loop reads: an `icv-data build` folder as batches of (input, target, instruction tokens).

The folder is a Hugging Face `datasets` dataset saved with `save_to_disk`, one row per example with the columns
`input_image` (Image), `edit_prompt` (str), `edited_image` (Image), `task`, `category`, `source`, `image_id`.
The order of the examples (`EpochShuffleSampler`) and their augmentation (`augment.example_rng`) depend only on
the seed, the epoch and the example's index, so a resumed run sees exactly the data an uninterrupted run sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icv_deploy.errors import IcvError

from .augment import example_rng, paired_augment

COLUMNS = ("input_image", "edit_prompt", "edited_image", "task")


def open_dataset(path: str | Path, max_train_samples: int | None = None):
    """The dataset saved in `path` (a DatasetDict gives its `train` split), checked for the needed columns."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise IcvError(f"training data {path}: no such folder (expected an `icv-data build` output folder)")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise IcvError(f"training data {path}: not a saved `datasets` dataset ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise IcvError(f"training data {path}: no `train` split (found: {', '.join(ds)})")
        ds = ds["train"]
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise IcvError(f"training data {path}: missing column(s) {', '.join(missing)} (has: {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise IcvError(f"training data {path}: no examples")
    if max_train_samples is not None:
        ds = ds.select(range(min(max_train_samples, len(ds))))
    return ds


def painted_settings(path: str | Path) -> dict:
    """What the runtime must know of how a build painted its answers, for icv_config.json of the models trained on it:
    `box_line_fraction` where the build set one (`icv-data build --box-width`); {} for other data."""
    from .build import build_options

    options = build_options(path)
    return {key: options[key] for key in ("box_line_fraction",) if key in options}


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


class InstructionExamples(torch.utils.data.Dataset):
    """Rows of the dataset as augmented tensors; `set_epoch` changes the augmentation of every example."""

    def __init__(self, rows, tokenizer, resolution: int, resize_min: int, resize_max: int, flip: bool, seed: int):
        self.rows, self.tokenizer = rows, tokenizer
        self.augment = dict(resolution=resolution, resize_min=resize_min, resize_max=resize_max, flip=flip)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        rng = example_rng(self.seed, self.epoch, index)
        image, target = paired_augment(row["input_image"], row["edited_image"], rng, **self.augment)
        return {"input_pixels": image, "target_pixels": target,
                "input_ids": tokenize(self.tokenizer, [row["edit_prompt"]])[0]}


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch, drawn from (seed, epoch) alone: the same on every process and every run."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        yield from torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(seed)).tolist()


def validation_indices(rows, per_task: int) -> list[int]:
    """The first `per_task` examples of each task, in the order the tasks first appear: a fixed picture set."""
    chosen: dict[str, list[int]] = {}
    for index, task in enumerate(rows["task"]):
        picks = chosen.setdefault(task, [])
        if len(picks) < per_task:
            picks.append(index)
    return [i for picks in chosen.values() for i in picks]

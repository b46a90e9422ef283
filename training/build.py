"""`icv-data build`: materialise the instruction-tuning dataset as a Hugging Face `datasets` folder.

Output (`datasets.load_from_disk(out)` opens it), one row per training pair:
    input_image   Image   the input picture, RGB, resized (policy in training/pairs.py: short side = --size,
                          centre crop; --size 0 keeps the native size)
    edit_prompt   string  the instruction (fixed template or paraphrase, training/prompts.py)
    edited_image  Image   the visual target v(y), same size, painted by icv_deploy.tasks.encodings
    task          string  segmentation | detection | depth | classification
    category      string  the category the instruction names (None for depth)
    source        string  the adapter kind (coco, ade20k, nyuv2, pets, synth)
    image_id      string  the image's id inside its source
The column names are those of diffusers' InstructPix2Pix training script (input_image, edit_prompt,
edited_image). Augmentation (random flip, resize 256-288 + crop 256) is NOT baked in: training/augment.py
applies it in training/train.py, identically to input_image and edited_image.

How a build runs, so that an interrupted one resumes and ends with the same dataset:
1. Plan: every source's index (cheap: annotation files only), shuffled per (source, task) with the seed,
   capped by --max-per-source (round robin over the source's tasks), pooled per task (round robin over the
   sources), balanced (every task gets as many examples as the smallest task has), shuffled, and given its
   instruction. The plan is saved in the work folder (OUT.work/plan.json) with a fingerprint of the options.
2. Shards: the plan in chunks of --shard-size; each chunk is written as a small dataset under
   OUT.work/shards/NNNNN, atomically (temporary folder, then rename), by --workers processes. A rerun
   skips finished shards.
3. Assemble: the shards in order are concatenated into OUT (atomic replace), the work folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from icv_deploy.atomic import atomic_dir, write_json
from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import TASKS

from .datasets import ADAPTERS, ExampleRef, open_source
from .pairs import make_pair
from .prompts import CLASSIFICATION_COLORS, choose_prompt, load_pool

PLAN_VERSION = 1
COLUMNS = ("input_image", "edit_prompt", "edited_image", "task", "category", "source", "image_id")


class BuildInterrupted(RuntimeError):
    """Raised by the test hook `stop_after_shards` to simulate a crash half-way."""


def parse_source(text: str) -> tuple[str, str, str | None]:
    """"KIND:ROOT" or "KIND[SPLIT]:ROOT" -> (kind, root, split or None)."""
    kind, sep, root = text.partition(":")
    split = None
    if "[" in kind and kind.endswith("]"):
        kind, split = kind[:-1].split("[", 1)
    if not sep or not root or kind not in ADAPTERS:
        raise IcvError(f"--source {text!r}: expected KIND:ROOT with KIND one of {', '.join(sorted(ADAPTERS))}")
    return kind, root, split


def features():
    import datasets

    return datasets.Features({
        "input_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
        "edited_image": datasets.Image(), "task": datasets.Value("string"), "category": datasets.Value("string"),
        "source": datasets.Value("string"), "image_id": datasets.Value("string"),
    })


def _round_robin(groups: list[list]) -> list:
    """[a1, a2], [b1], [c1, c2, c3] -> a1 b1 c1 a2 c2 c3."""
    out, longest = [], max((len(g) for g in groups), default=0)
    for i in range(longest):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def plan_build(adapters, seed: int = 0, max_per_source: int | None = None, balance: bool = True,
               prompts: str = "fixed", pool: dict | None = None, tasks=None,
               colors: tuple[str, str] | None = None) -> list[dict]:
    """The ordered list of examples to build, each with its instruction (see the module docstring)."""
    per_task: dict[str, list[list[ExampleRef]]] = {t: [] for t in TASKS}
    for s, adapter in enumerate(adapters):
        refs = adapter.index(tasks)
        groups = {t: [r for r in refs if r.task == t] for t in TASKS}
        for t, group in groups.items():
            order = np.random.default_rng([seed, s, TASKS.index(t)]).permutation(len(group))
            groups[t] = [group[i] for i in order]
        if max_per_source:
            kept = _round_robin([g for g in groups.values() if g])[:max_per_source]
            groups = {t: [r for r in kept if r.task == t] for t in TASKS}
        for t in TASKS:
            per_task[t].append([(s, r) for r in groups[t]])
    pooled = {t: _round_robin(per_task[t]) for t in TASKS}
    counts = [len(v) for v in pooled.values() if v]
    if not counts:
        raise IcvError("the sources hold no examples for the wanted tasks")
    if balance:
        pooled = {t: v[: min(counts)] for t, v in pooled.items()}
    entries = [item for t in TASKS for item in pooled[t]]
    order = np.random.default_rng([seed, 7919]).permutation(len(entries))
    plan = []
    for n, i in enumerate(order):
        s, ref = entries[i]
        prompt, color1, color2 = choose_prompt(ref.task, ref.category, np.random.default_rng([seed, n, 1]), prompts, pool,
                                              colors)
        plan.append({"source_index": s, **asdict(ref), "prompt": prompt, "color1": color1, "color2": color2})
    return plan


def _png(image: np.ndarray) -> dict:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return {"bytes": data.tobytes(), "path": None}


def _write_shard(entries: list[dict], adapters, size: int, folder: Path, progress=None,
                 yes_radius: int | None = None, line_fraction: float | None = None) -> int:
    import datasets

    rows = {c: [] for c in COLUMNS}
    for entry in entries:
        ref = ExampleRef(**{k: entry[k] for k in ("source", "image_id", "task", "category", "key", "present")})
        pair = make_pair(adapters[entry["source_index"]].load(ref), size, entry["color1"], entry["color2"], yes_radius,
                         line_fraction)
        if progress is not None:
            progress.update(1)
        if pair is None:
            continue
        for column, value in zip(COLUMNS, (_png(pair[0]), entry["prompt"], _png(pair[1]), ref.task,
                                           ref.category, ref.source, ref.image_id)):
            rows[column].append(value)
    with atomic_dir(folder) as tmp:
        datasets.Dataset.from_dict(rows, features=features()).save_to_disk(str(tmp))
    return len(entries)


# Worker processes (--workers > 1) open their own adapters once, then write whole shards: the shards, and
# so the dataset, are the same whichever process wrote them.
_worker_adapters: list | None = None


def _init_worker(specs) -> None:
    global _worker_adapters
    import datasets

    datasets.disable_progress_bars()
    _worker_adapters = [open_source(kind, root, split=split) for kind, root, split in specs]


def _shard_job(job) -> int:
    entries, size, folder, yes_radius, line_fraction = job
    return _write_shard(entries, _worker_adapters, size, Path(folder), yes_radius=yes_radius, line_fraction=line_fraction)


def _fingerprint(options: dict, pool: dict | None) -> str:
    blob = json.dumps({"options": options, "pool": pool, "version": PLAN_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(sources: list[str], out: str | Path, prompts: str = "fixed", split: str | None = None,
          max_per_source: int | None = None, seed: int = 0, size: int = 256, balance: bool = True,
          shard_size: int = 256, pool_file: str | Path | None = None, tasks=None, overwrite: bool = False,
          restart: bool = False, keep_work: bool = False, progress: bool = True, workers: int = 1,
          stop_after_shards: int | None = None, yes_radius: int | None = None, colors: tuple[str, str] | None = None,
          box_width: int | None = None):
    """Build the dataset into `out` and return it (a `datasets.Dataset`). `yes_radius`: present classification
    targets as the category's mask grown by that many pixels (training/yes_no_curriculum.py); the plan, and so
    every row's instruction, is the same as without it. `colors`: every classification instruction names this pair
    (present, absent) instead of one drawn per example. `box_width`: detection outlines this many pixels wide at
    `size` (default: box_line_width's 1/128 of the long side); the build records it as `box_line_fraction`, which
    icv-train copies into the models it trains. `stop_after_shards` is a test hook."""
    import datasets
    from tqdm import tqdm

    datasets.disable_progress_bars()  # one bar (ours) is enough
    out = Path(out)
    if size and size < 8:
        raise IcvError(f"--size must be 0 (native) or at least 8, not {size}")
    if yes_radius is not None and yes_radius < 0:
        raise IcvError(f"--yes-radius must be at least 0, not {yes_radius}")
    if box_width is not None and not (size and 1 <= box_width <= size // 10):
        raise IcvError(f"--box-width needs --size (the outline is that many pixels at SIZE) and must be between 1 and "
                       f"a tenth of it, not {box_width} at size {size}")
    line_fraction = box_width / size if box_width is not None else None
    if colors is not None:
        colors = tuple(colors)
        unknown = [c for c in colors if c not in CLASSIFICATION_COLORS]
        if len(colors) != 2 or unknown or colors[0] == colors[1]:
            raise IcvError(f"--colors must name two different colours of {', '.join(CLASSIFICATION_COLORS)}, not "
                           f"{','.join(colors)}")
    if prompts not in ("fixed", "rephrased"):
        raise IcvError(f"--prompts must be fixed or rephrased, not {prompts!r}")
    specs = [parse_source(s) for s in sources]
    if not specs:
        raise IcvError("no --source given")
    adapters = [open_source(kind, root, split=own_split or split) for kind, root, own_split in specs]
    pool = load_pool(pool_file) if prompts == "rephrased" else None
    options = {"sources": [[k, str(Path(r).resolve()), s or split] for k, r, s in specs], "prompts": prompts,
               "max_per_source": max_per_source, "seed": seed, "size": size, "balance": balance,
               "shard_size": shard_size, "tasks": sorted(tasks) if tasks else None}
    if yes_radius is not None:  # only when asked, so that the builds made before the option keep their fingerprint
        options["yes_radius"] = yes_radius
    if colors is not None:
        options["colors"] = list(colors)
    if line_fraction is not None:
        options["box_line_fraction"] = line_fraction
    fingerprint = _fingerprint(options, pool)
    if out.exists() and any(out.iterdir()) and not overwrite:
        done = out / "icv_build.json"
        if done.exists() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
            return datasets.load_from_disk(str(out))  # built before with these very options: nothing to do
        raise IcvError(f"{out} exists and is not empty; pass --overwrite to replace it")

    work = out.with_name(out.name + ".work")
    plan_file = work / "plan.json"
    if plan_file.exists() and not restart:
        saved = json.loads(plan_file.read_text())
        if saved.get("fingerprint") != fingerprint:
            raise IcvError(f"{work} holds an unfinished build with other options; rerun with the same options "
                           f"to resume it, or pass --restart to discard it")
        plan = saved["plan"]
    else:
        shutil.rmtree(work, ignore_errors=True)
        plan = plan_build(adapters, seed, max_per_source, balance, prompts, pool, tasks, colors)
        write_json(plan_file, {"fingerprint": fingerprint, "options": options, "plan": plan}, indent=None)

    chunks = [plan[i:i + shard_size] for i in range(0, len(plan), shard_size)]
    shard_dirs = [work / "shards" / f"{k:05d}" for k in range(len(chunks))]
    done = sum(len(c) for c, d in zip(chunks, shard_dirs) if d.is_dir())
    pending = [(chunk, folder) for chunk, folder in zip(chunks, shard_dirs) if not folder.is_dir()]
    with tqdm(total=len(plan), initial=done, desc="build", unit="ex", disable=not progress) as bar:
        if workers > 1 and len(pending) > 1:
            from concurrent.futures import ProcessPoolExecutor

            specs = [(kind, root, own_split or split) for kind, root, own_split in specs]
            with ProcessPoolExecutor(min(workers, len(pending)), initializer=_init_worker, initargs=(specs,)) as pool:
                for n in pool.map(_shard_job, [(chunk, size, str(folder), yes_radius, line_fraction) for chunk, folder in pending]):
                    bar.update(n)
        else:
            for written, (chunk, folder) in enumerate(pending):
                if stop_after_shards is not None and written >= stop_after_shards:
                    raise BuildInterrupted(f"stopped after {written} shards (test hook)")
                _write_shard(chunk, adapters, size, folder, bar, yes_radius, line_fraction)

    parts = [datasets.load_from_disk(str(d)) for d in shard_dirs]
    dataset = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({c: [] for c in COLUMNS}, features=features())
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))
        write_json(tmp / "icv_build.json", {"fingerprint": fingerprint, "options": options, "rows": len(dataset),
                                            "counts": summary_counts(dataset)})
    del parts, dataset
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return datasets.load_from_disk(str(out))


def build_options(folder: str | Path) -> dict:
    """The options a finished `icv-data build` recorded in FOLDER/icv_build.json; {} for data without one."""
    info = Path(folder) / "icv_build.json"
    return json.loads(info.read_text()).get("options", {}) if info.is_file() else {}


def summary_counts(dataset) -> dict[str, dict[str, int]]:
    """{source: {task: rows}} of a built dataset."""
    counts: dict[str, dict[str, int]] = {}
    for source, task in zip(dataset["source"], dataset["task"]):
        counts.setdefault(source, {}).setdefault(task, 0)
        counts[source][task] += 1
    return counts


def summary_table(dataset):
    """A rich Table: examples per source and task, with totals."""
    from rich.table import Table

    counts = summary_counts(dataset)
    table = Table(title=f"{len(dataset)} training pairs")
    table.add_column("source")
    for task in TASKS:
        table.add_column(task, justify="right")
    table.add_column("total", justify="right")
    for source in sorted(counts):
        row = [counts[source].get(t, 0) for t in TASKS]
        table.add_row(source, *map(str, row), str(sum(row)))
    totals = [sum(c.get(t, 0) for c in counts.values()) for t in TASKS]
    table.add_row("total", *map(str, totals), str(sum(totals)), style="bold")
    return table

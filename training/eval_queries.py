"""The queries of an `icv-eval` run: one (image, task, category) example with its instruction.

`collect_queries` reads every `--data` source's index (cheap, no pixels): a dataset adapter (KIND:ROOT, scored
against the raw ground truth, instructions from training/prompts.py with classification colours drawn per query
from the seed) or an `icv-data build` folder (ground truth read back from the painted targets with the runtime's
decoders). `batches` groups queries of the same image and task for one `pipe.run_many` call.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import TASKS

from .datasets import Example, open_source


@dataclass
class Query:
    key: str  # unique in a run: dataset/image_id/task[/category], "#n" appended to repeats
    task: str
    category: str | None
    dataset: str
    image_id: str
    instruction: str
    load: Callable[[], Example]  # the image and its raw ground truth, read when the query runs
    colors: tuple[str, str] | None = None  # classification: the instruction's (colour if present, if absent)


def collect_queries(sources: list[str], tasks, limit: int | None, prompts: str, seed: int) -> list[Query]:
    queries: list[Query] = []
    for source in sources:
        found = _build_folder_queries(Path(source), tasks) if _is_build_folder(source) else _adapter_queries(source, tasks, prompts, seed)
        queries += _limit(found, limit)
    seen: dict[str, int] = {}
    for q in queries:
        n = seen[q.key] = seen.get(q.key, 0) + 1
        if n > 1:
            q.key = f"{q.key}#{n}"
    if not queries:
        raise IcvError(f"no queries: the data ({', '.join(sources)}) holds nothing for the tasks {', '.join(tasks or TASKS)}")
    return queries


def _key(*parts) -> str:
    return "/".join(str(p) for p in parts if p is not None)


def _is_build_folder(source: str) -> bool:
    return (Path(source) / "dataset_info.json").is_file() or (Path(source) / "icv_build.json").is_file()


def _adapter_queries(source: str, tasks, prompts: str, seed: int) -> list[Query]:
    from .build import parse_source
    from .prompts import POOL_FILES, choose_prompt, load_pool

    if ":" not in source and Path(source).exists():
        raise IcvError(f"--data {source}: not an `icv-data build` folder (no dataset_info.json); for raw data write KIND:ROOT")
    kind, root, split = parse_source(source)
    adapter = open_source(kind, root, split=split)
    pool = load_pool(POOL_FILES[prompts]) if prompts in POOL_FILES else None
    out = []
    for ref in adapter.index(tasks):
        key = _key(ref.source, ref.image_id, ref.task, ref.category)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        instruction, color1, color2 = choose_prompt(ref.task, ref.category, rng, prompts, pool)
        out.append(Query(key, ref.task, ref.category, ref.source, ref.image_id, instruction,
                         load=lambda ref=ref: adapter.load(ref), colors=(color1, color2) if color1 else None))
    return out


def _build_folder_queries(folder: Path, tasks) -> list[Query]:
    import datasets

    from icv_deploy.tasks.decoders import decode
    from icv_deploy.tasks.routing import route

    rows = datasets.load_from_disk(str(folder))
    wanted = set(tasks or TASKS)
    meta = rows.select_columns(["task", "category", "source", "image_id", "edit_prompt"])

    def load(i: int) -> Example:
        row = rows[i]
        image, target = np.asarray(row["input_image"].convert("RGB")), np.asarray(row["edited_image"].convert("RGB"))
        answer = decode(row["task"], target, route(row["edit_prompt"], task=row["task"]), image.shape[:2])
        ex = Example(image=image, task=row["task"], category=row["category"], source=row["source"], image_id=row["image_id"])
        ex.mask, ex.boxes, ex.depth, ex.present = answer.get("mask"), answer.get("boxes"), answer.get("depth"), answer.get("present")
        return ex

    out = []
    for i, row in enumerate(meta):
        if row["task"] in wanted:
            r = route(row["edit_prompt"], task=row["task"])
            key = _key(row["source"], row["image_id"], row["task"], row["category"])
            out.append(Query(key, row["task"], row["category"], row["source"], row["image_id"], row["edit_prompt"],
                             load=lambda i=i: load(i), colors=(r.color_if_present, r.color_if_absent) if r.color_if_present else None))
    return out


def _limit(queries: list[Query], limit: int | None) -> list[Query]:
    """The first `limit` queries of each (dataset, task), in index order."""
    if not limit:
        return queries
    counts: dict[tuple[str, str], int] = {}
    kept = []
    for q in queries:
        n = counts[(q.dataset, q.task)] = counts.get((q.dataset, q.task), 0) + 1
        if n <= limit:
            kept.append(q)
    return kept


def batches(queries: list[Query], batch: int) -> list[list[Query]]:
    """Queries of the same image and task, in chunks of `batch` (one run_many call each)."""
    groups: dict[tuple[str, str, str], list[Query]] = {}
    for q in queries:
        groups.setdefault((q.dataset, q.image_id, q.task), []).append(q)
    return [g[i:i + batch] for g in groups.values() for i in range(0, len(g), batch)]

"""`icv-eval`: run a model over a dataset and score it like the paper's Table 1 (metrics: icv_deploy.metrics).

    icv-eval --model alaa-lab/InstructCV --data coco[val]:/data/coco --data nyuv2:/data/nyu.mat --out eval/
    accelerate launch -m icv_deploy.training.evaluate --model M --data ... --out eval/     # many GPUs

One *query* is one (image, task, category) example with its instruction. How a run goes:
1. Queries: every `--data` source's index (cheap, no pixels), filtered by --tasks, at most --limit per
   (dataset, task), each with an instruction from training/prompts.py (fixed template or a paraphrase, the
   classification colours drawn per query from the seed: reproducible).
2. Queries of the same image and task are batched (--batch K: one `pipe.run_many` call, one image encoding).
   Under `accelerate launch` the batches are split between the processes.
3. Each process appends one JSON line per finished query to OUT/predictions.rankR.jsonl (flushed and
   fsynced): only what the metrics need (intersection/union counts, boxes and scores, per-image depth errors,
   the yes/no). A rerun with the same settings skips every query found in any part file: it resumes.
4. The main process merges the parts and writes metrics.json (NaN written as null: undefined, see
   icv_deploy.metrics), table.md (Table 1 layout plus all metrics) and examples/TASK/*.png (input | model
   output v(y) | overlay | target v(y)), and prints the table.

`--data` is KIND:ROOT (or KIND[SPLIT]:ROOT) for a dataset adapter (coco, ade20k, nyuv2, pets, synth), scored
against the raw ground truth, or an `icv-data build` folder: there the ground truth is read back from the
painted targets with the runtime's decoders, so it is approximate (depth quantised to 10/255 m, boxes as
found by the outline detector): prefer KIND:ROOT for reported numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import click
import cv2
import numpy as np

from icv_deploy import metrics
from icv_deploy.atomic import write_bytes, write_json, write_text
from icv_deploy.cli_common import debug_option, one_line_errors
from icv_deploy.errors import IcvError
from icv_deploy.model_files import default_model
from icv_deploy.tasks.encodings import COLORS, DEPTH_MAX_M, TASKS, encode_classification, encode_depth, encode_detection, encode_segmentation
from icv_deploy.tasks.routing import DEFAULT_COLORS
from icv_deploy.tasks.visualize import TILE_HEIGHT, labelled_grid

from .datasets import Example
from .eval_queries import Query, batches, collect_queries
from .prompts import PROMPT_MODES

# Settings that change the predictions: a resumed run must use the same ones.
SETTING_KEYS = ("model", "engine", "sampler", "steps", "seed", "resolution", "prompts", "vae")


# The first line of table.md for a model that icv_deploy.testing built (icv_config.json: "random_weights": true).
RANDOM_WEIGHTS_NOTE = ("**Random weights:** model {model} was built from configs with random weights; these figures "
                       "exercise the pipeline and mean nothing about accuracy.")


# ----------------------------------------------------------------------------------------------- scoring
def score(query: Query, example: Example, res) -> dict:
    """The JSON record of one finished query: what icv_deploy.metrics needs, nothing image-sized."""
    record = {"key": query.key, "task": query.task, "dataset": query.dataset, "image_id": query.image_id,
              "category": query.category, "instruction": query.instruction}
    if query.task == "segmentation":
        gt = np.asarray(example.mask, dtype=bool)
        record["inter"], record["union"] = metrics.segmentation_counts(_fit(res.mask, gt.shape, cv2.INTER_NEAREST), gt)
    elif query.task == "detection":
        record["boxes"] = np.round(np.asarray(res.boxes, dtype=np.float64).reshape(-1, 4), 2).tolist()
        record["scores"] = np.round(np.asarray(res.scores, dtype=np.float64).reshape(-1), 5).tolist()
        record["gt_boxes"] = np.asarray(example.boxes, dtype=np.float64).reshape(-1, 4).tolist()
    elif query.task == "depth":
        gt = np.asarray(example.depth, dtype=np.float32)
        record["depth"] = metrics.depth_one(_fit(res.depth, gt.shape, cv2.INTER_LINEAR), gt, DEPTH_MAX_M)
    else:
        # Cls-Score is measured against the colour the instruction asks for when the answer is right.
        color_present, color_absent = query.colors or res.colors or DEFAULT_COLORS
        target = COLORS[color_present if example.present else color_absent]
        record.update(present=bool(res.present), gt_present=bool(example.present), score=float(res.score),
                      cls_score=metrics.cls_score(res.visual, target))
    return record


def _fit(array, shape, interpolation) -> np.ndarray:
    """The prediction at the ground truth's size (the runtime answers at the input size, which is usually it)."""
    array = np.asarray(array)
    if array.shape[:2] == tuple(shape[:2]):
        return array
    resized = cv2.resize(array.astype(np.float32), (shape[1], shape[0]), interpolation=interpolation)
    return resized > 0.5 if array.dtype == bool else resized


def compute_metrics(records: list[dict]) -> dict:
    """{task: {dataset: metrics}} from query records (see `score`)."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["task"], r["dataset"]), []).append(r)
    results: dict[str, dict] = {}
    for (task, dataset), rs in sorted(by.items(), key=lambda kv: (TASKS.index(kv[0][0]), kv[0][1])):
        if task == "segmentation":
            m = metrics.segmentation_from_counts([(r["inter"], r["union"]) for r in rs], [r["category"] for r in rs])
        elif task == "detection":
            m = metrics.detection([{"image_id": r["image_id"], "category": r["category"], "boxes": r["boxes"],
                                    "scores": r["scores"], "gt_boxes": r["gt_boxes"]} for r in rs])
        elif task == "depth":
            m = metrics.depth_from_images([r["depth"] for r in rs], DEPTH_MAX_M)
        else:
            m = metrics.classification([r["present"] for r in rs], [r["gt_present"] for r in rs], [r["cls_score"] for r in rs])
        seconds = [r["seconds"] for r in rs if "seconds" in r]
        if seconds:
            m["seconds_per_query"] = float(np.mean(seconds))
        results.setdefault(task, {})[dataset] = m
    return results


# ---------------------------------------------------------------------------------------- resumable log
class PredictionLog:
    """OUT/predictions.rankR.jsonl, one record per line, appended and fsynced per query."""

    def __init__(self, out: Path, rank: int):
        self.path = out / f"predictions.rank{rank}.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a crash mid-line leaves a tail without newline: cut it
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_records(out: Path) -> dict[str, dict]:
    """Every finished query of every part file, by key (a torn last line is ignored)."""
    records = {}
    for part in sorted(out.glob("predictions.rank*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["key"]] = record
    return records


# ---------------------------------------------------------------------------------------- example pictures
EXAMPLE_COLUMNS = ("input", "model output", "answer", "target")

def save_example_picture(folder: Path, query: Query, example: Example, res,
                         box_line_fraction: float | None = None) -> None:
    """input | model output v(y) | overlay | target v(y), side by side under their labels, the instruction below,
    enlarged to at least 256 pixels high so that a 128-pixel model's output can be read. `box_line_fraction`: the
    model's outline width, for the detection target."""
    image = example.image
    h, w = image.shape[:2]
    if query.task == "segmentation":
        target = encode_segmentation(example.mask)
    elif query.task == "detection":
        target = encode_detection(image, example.boxes, box_line_fraction)
    elif query.task == "depth":
        target = encode_depth(example.depth)
    else:
        c1, c2 = query.colors or res.colors or DEFAULT_COLORS
        target = encode_classification(bool(example.present), (h, w), c1, c2)
    panels = [image, res.visual, res.overlay(), target]
    row = labelled_grid([[np.ascontiguousarray(p, dtype=np.uint8) for p in panels]], column_labels=list(EXAMPLE_COLUMNS),
                        row_captions=[query.instruction], tile_height=max(TILE_HEIGHT, h))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", query.key)[-80:]
    ok, data = cv2.imencode(".png", cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    if ok:
        write_bytes(folder / f"{name}.png", data.tobytes())


# ------------------------------------------------------------------------------------------------ the run
def _process_state(device: str | None):
    """accelerate's PartialState (rank, world size, device), or None without accelerate (one process).

    On CPU, PartialState only joins the other processes when told `cpu=True` (accelerate launch --cpu sets
    ACCELERATE_USE_CPU): without it every process would think it is alone and all would run everything.
    """
    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError:
        state = None
    else:
        cpu = device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not _cuda()
        state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and (state is None or state.num_processes != launched):
        raise IcvError(f"launched as {launched} processes but accelerate sees {state.num_processes if state else 1}; "
                       f"start with `accelerate launch` (and --cpu for CPU processes)")
    return state


def evaluate(model: str, data: list[str], out: str | Path, engine: str = "torch", device: str | None = None,
             tasks=None, limit: int | None = None, steps: int | None = None, sampler: str | None = None,
             seed: int = 0, resolution: int | None = None, batch: int = 1, prompts: str = "fixed",
             examples: int = 4, restart: bool = False, progress: bool = True, vae: str | None = None) -> dict | None:
    """Run the evaluation (module docstring); returns the metrics.json content on the main process."""
    from tqdm import tqdm

    import icv_deploy

    out = Path(out)
    state = _process_state(device)
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = rank == 0

    def barrier():
        if state is not None and world > 1:
            state.wait_for_everyone()

    settings = {"model": str(model), "engine": engine, "sampler": sampler, "steps": steps, "seed": seed,
                "resolution": resolution, "prompts": prompts, "vae": vae}
    run_file = out / "run.json"
    if run_file.exists() and not restart:
        saved = json.loads(run_file.read_text())
        diff = [k for k in SETTING_KEYS if saved.get(k) != settings[k]]
        if diff:
            raise IcvError(f"{out} holds results of a run with other settings ({', '.join(f'{k} {saved.get(k)!r}' for k in diff)}); "
                           f"use another --out, the same settings, or --restart")
    # Bad input is refused before anything is written: the data sources are indexed and the model is opened first.
    queries = collect_queries(list(data), tasks, limit, prompts, seed)
    # Split all batches (not only the unfinished ones) so that every process gets the same share whatever the
    # other processes have finished by the time it reads the part files; then drop what is done.
    mine = batches(queries, batch)
    if state is not None and world > 1:
        with state.split_between_processes(mine) as share:
            mine = list(share)
    done = {} if restart else read_records(out)
    todo = [b for b in ([q for q in group if q.key not in done] for group in mine) if b]
    if device is None:
        device = str(state.device) if state is not None else ("cuda" if _cuda() else "cpu")
    pipe = icv_deploy.load(model, engine=engine, device=device, vae=vae) if todo else None

    barrier()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if restart:
            for part in out.glob("predictions.rank*.jsonl"):
                part.unlink()
            shutil.rmtree(out / "examples", ignore_errors=True)
        write_json(run_file, settings)
    barrier()

    if todo:
        pipe.progress = False
        log = PredictionLog(out, rank)
        # The first `examples` queries of each task (in this process's share) get a picture, whichever run does
        # them: a resumed run saves the same pictures as an uninterrupted one.
        pictured = set()
        if is_main:
            for task in TASKS:
                pictured.update([q.key for group in mine for q in group if q.task == task][:examples])
        kwargs = dict(steps=steps, sampler=sampler, seed=seed, **({} if resolution is None else {"resolution": resolution}))
        total = sum(len(b) for b in todo)
        desc = "eval" if world == 1 else f"eval (rank 0 of {world})"
        with tqdm(total=total, desc=desc, unit="query", disable=not (progress and is_main)) as bar:
            for group in todo:
                loaded = [q.load() for q in group]
                t0 = time.perf_counter()
                if len(group) > 1 and hasattr(pipe, "run_many"):
                    results = pipe.run_many(loaded[0].image, [q.instruction for q in group], task=group[0].task, **kwargs)
                else:
                    results = [pipe(ex.image, q.instruction, task=q.task, **kwargs) for q, ex in zip(group, loaded)]
                seconds = (time.perf_counter() - t0) / len(group)
                for q, ex, res in zip(group, loaded, results):
                    if q.key in pictured:  # before the record: a query on record has its picture
                        save_example_picture(out / "examples" / q.task, q, ex, res, pipe.box_line_fraction)
                    log.append({**score(q, ex, res), "seconds": round(seconds, 4),
                                "random_weights": bool(getattr(pipe, "random_weights", False))})
                bar.update(len(group))
    barrier()
    if not is_main:
        return None

    records = read_records(out)
    wanted = [records[q.key] for q in queries if q.key in records]
    if len(wanted) < len(queries):
        raise IcvError(f"{len(queries) - len(wanted)} queries have no result in {out}; rerun to finish them")
    results = compute_metrics(wanted)
    label = f"{Path(str(model)).name} ({engine}, {sampler or 'default sampler'}, {steps or 'default'} steps" + \
        (f", {vae} VAE)" if vae else ")")
    # Each record says whether its model had random weights: known on resume too, without opening the model.
    random_weights = any(r.get("random_weights", False) for r in wanted)
    report = {"settings": settings, "data": list(data), "queries": len(wanted), "random_weights": random_weights,
              "results": results, "label": label}
    write_json(out / "metrics.json", _json_safe(report))
    table = f"{metrics.table1({label: results})}\n{metrics.details_table(results)}"
    if random_weights:
        table = f"{RANDOM_WEIGHTS_NOTE.format(model=model)}\n\n{table}"
    write_text(out / "table.md", table)
    return report


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _json_safe(obj):
    """NaN (undefined metric) -> null: metrics.json stays strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------- CLI
def _task_list(ctx, param, value):
    tasks = [t.strip() for v in value for t in v.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise click.BadParameter(f"unknown task {unknown[0]!r}; tasks are {', '.join(TASKS)}")
    return tuple(tasks) or None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=default_model, show_default="$ICV_MODEL, else demo",
              help="A bundled model by name (demo, demo-1step), a diffusers folder or hub id (torch), an ONNX folder (onnx) "
                   "or an engine folder (trt).")
@click.option("--engine", type=click.Choice(["torch", "onnx", "trt", "openvino"]), default="torch", show_default=True,
              help="openvino: the precision is the folder's (an ONNX folder runs bf16 where the CPU has it; an "
                   "`icv-export openvino` folder its own f32, bf16 or int8).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the process's GPU under accelerate, else cuda if present, else cpu).")
@click.option("--data", "data", multiple=True, required=True, metavar="SOURCE",
              help="KIND:ROOT or KIND[SPLIT]:ROOT (KIND: coco, ade20k, nyuv2, pets, synth) or an `icv-data build` folder; repeatable.")
@click.option("--tasks", multiple=True, callback=_task_list, metavar="TASK[,TASK]",
              help=f"Only these tasks ({', '.join(TASKS)}); comma-separated or repeated. Default: all the data has.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N queries per dataset and task (the first N in index order).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampling steps (default: the model's, 100 for InstructCV).")
@click.option("--sampler", default=None, help="euler_a, euler, dpmpp_2m, lcm ... (default: the model's).")
@click.option("--seed", default=0, show_default=True, help="Sampling seed (the same for every query) and prompt colours.")
@click.option("--resolution", type=click.IntRange(16), default=None, help="Working resolution (default: the model's, 256).")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Queries of the same image and task run together.")
@click.option("--prompts", type=click.Choice(PROMPT_MODES), default="fixed", show_default=True,
              help="fixed templates, paraphrases from the training pool (the paper's Table 1 used rephrased), or "
                   "unseen / blind: instructions never used in training (training/prompts/unseen.json; blind.json, "
                   "written by someone who never saw the training pool or the phrasing grammar).")
@click.option("--examples", type=click.IntRange(0), default=4, show_default=True, help="Example pictures saved per task.")
@click.option("--vae", type=click.Choice(["full", "tiny"]), default=None,
              help="Autoencoder: full (the model's SD VAE) or tiny (TAESD from <model>/vae_tiny, or an ONNX folder exported "
                   "with --vae tiny): how much accuracy the tiny VAE costs. [default: the model's own]")
@click.option("--restart", is_flag=True, help="Discard the results already in --out instead of resuming.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@debug_option
@one_line_errors
def main(model, engine, device, data, tasks, limit, steps, sampler, seed, resolution, batch, prompts, examples, vae, restart, out):
    """Evaluate a model on segmentation, detection, depth and classification data, as in the paper's Table 1.

    Writes OUT/metrics.json, OUT/table.md, OUT/examples/ and per-query results (OUT/predictions.rank*.jsonl);
    a rerun with the same settings resumes. Under `accelerate launch -m icv_deploy.training.evaluate` the
    queries are shared between the processes.
    """
    report = evaluate(model, list(data), out, engine=engine, device=device, tasks=tasks, limit=limit, steps=steps,
                      sampler=sampler, seed=seed, resolution=resolution, batch=batch, prompts=prompts,
                      examples=examples, restart=restart, vae=vae)
    if report is not None:
        click.echo((Path(out) / "table.md").read_text())
        click.echo(f"{report['queries']} queries; metrics in {Path(out) / 'metrics.json'}")


if __name__ == "__main__":
    main()

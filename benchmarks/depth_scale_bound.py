"""How well can one picture of `icv-data synth` tell its metric scale? (issue 12's depth target)

    python benchmarks/depth_scale_bound.py --data synth:HELDOUT [--model demo-1step] --out OUT

Every length of a synthetic scene is drawn uniformly and independently (training/synthetic.py: CAMERA_HEIGHT_M,
WALL_DISTANCE_M, OBJECT_SIZES_M), and a picture's geometry fixes every length only relative to the camera height h:
the scene scaled by any k paints the same shapes. A depth map right in shape but made for the height g is off by g / h
at every pixel, so its AbsRel is |g / h - 1|. The best g for a reader who measures the picture's ratios exactly
minimises the expected |g / h - 1| under the posterior of h: the median of h weighted by posterior(h) / h. Rows:

    prior          h's own range alone
    + wall         and the wall's distance over h (the wall stands WALL_DISTANCE_M away)
    + objects      and every object's sizes over h (OBJECT_SIZES_M)

A measured ratio rho = s / h of a length s ~ U(a, b) multiplies the posterior by h * [a <= rho h <= b]. The textures
tell the scale too (the ground's grain is 7 cm, it fades from 3 to 9 m, the wall brightens with height in metres), so
these rows bound a reader of shapes, not every reader.

With --model, the model's own depth answers to the evaluator's depth queries: their AbsRel, the AbsRel left when each
answer is divided by its picture's own scale s, and the scale error
itself, mean |s - 1| with s the median of predicted over true depth, to set beside the rows above. OUT/scale.json
(figures, settings, machine) and OUT/scale.md (the table).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import machine_description, save_report  # noqa: E402

from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402
from icv_deploy.errors import IcvError  # noqa: E402
from icv_deploy.training.synthetic import CAMERA_HEIGHT_M, OBJECT_SIZES_M, WALL_DISTANCE_M  # noqa: E402

BOUNDS = ("prior", "+ wall", "+ objects")
HEIGHTS = np.linspace(*CAMERA_HEIGHT_M, 2001)  # the grid the posterior of h lives on


def scale_posteriors(annotation: dict) -> dict[str, np.ndarray]:
    """{row: the posterior of the camera height on HEIGHTS} for one scene, each row adding its cue to the one before."""
    camera = annotation["camera"]
    height = camera["height_m"]
    posterior = np.ones_like(HEIGHTS)
    out = {"prior": posterior}
    posterior = posterior * _ratio_likelihood(camera["wall_z_m"] / height, WALL_DISTANCE_M)
    out["+ wall"] = posterior
    for solid in annotation["objects"]:
        for length, bounds in OBJECT_SIZES_M[solid["category"]].items():
            posterior = posterior * _ratio_likelihood(solid["shape"][length] / height, bounds)
    out["+ objects"] = posterior
    return out


def _ratio_likelihood(ratio: float, bounds: tuple[float, float]) -> np.ndarray:
    """p(ratio | h) on HEIGHTS, up to a constant, for ratio = s / h with s ~ U(bounds)."""
    low, high = bounds
    return HEIGHTS * ((ratio * HEIGHTS >= low) & (ratio * HEIGHTS <= high))


def best_height(posterior: np.ndarray) -> float:
    """The guess g minimising E|g / h - 1| = E[|g - h| / h]: the median of h weighted by posterior(h) / h."""
    weights = np.cumsum(posterior / HEIGHTS)
    if weights[-1] <= 0:
        raise ValueError("the cues contradict each other: the posterior of the camera height is empty")
    return float(HEIGHTS[np.searchsorted(weights, weights[-1] / 2)])


def bounds_row(annotations: list[dict]) -> dict[str, float]:
    """{row: mean |g / h - 1| over the scenes}: the AbsRel of depth maps right in shape, scaled by the best guess."""
    errors = {row: [] for row in BOUNDS}
    for annotation in annotations:
        height = annotation["camera"]["height_m"]
        for row, posterior in scale_posteriors(annotation).items():
            errors[row].append(abs(best_height(posterior) / height - 1))
    return {row: float(np.mean(e)) for row, e in errors.items()}


def model_scale(model: str | None, data: str, limit: int | None, prompts: str, seed: int) -> dict:
    """The model's depth answers to the evaluator's depth queries: AbsRel as answered, divided by each picture's own
    scale (the median of predicted over true depth), and the mean scale error."""
    from tqdm.auto import tqdm

    import icv_deploy
    from icv_deploy import metrics
    from icv_deploy.training.eval_queries import collect_queries

    pipe = icv_deploy.load(model)
    pipe.progress = False
    answered, rescaled, scale_errors = [], [], []
    for query in tqdm(collect_queries([data], ["depth"], limit, prompts, seed), desc="depth", unit="query"):
        example = query.load()
        truth = np.asarray(example.depth, np.float64)
        answer = np.asarray(pipe(example.image, query.instruction, task="depth").depth, np.float64)
        if answer.shape != truth.shape:
            raise IcvError(f"{query.key}: depth answer {answer.shape} for ground truth {truth.shape}")
        valid = np.isfinite(truth) & (truth > 0)
        scale = float(np.median(answer[valid] / truth[valid]))
        answered.append(metrics.depth_one(answer, truth)["abs_rel"])
        rescaled.append(metrics.depth_one(answer / scale, truth)["abs_rel"])
        scale_errors.append(abs(scale - 1))
    return {"model": pipe.source, "images": len(answered), "abs_rel": float(np.mean(answered)),
            "abs_rel_own_scale": float(np.mean(rescaled)), "scale_error": float(np.mean(scale_errors))}


def read_annotations(data: str) -> list[dict]:
    from icv_deploy.training.build import parse_source

    kind, root, _ = parse_source(data)
    if kind != "synth":
        raise IcvError(f"--data {data}: the bounds need `icv-data synth` scenes (synth:ROOT), whose annotations record "
                       f"the camera and the objects' sizes")
    files = sorted((Path(root) / "annotations").glob("*.json"))
    if not files:
        raise IcvError(f"--data {data}: no annotations/*.json under {root}")
    return [json.loads(f.read_text()) for f in files]


def markdown(doc: dict) -> str:
    lines = [f"# Metric scale from one picture: {doc['data']}", "",
             f"{doc['scenes']} scenes; {doc['date']} on {doc['machine']['cpu']}.", "", f"Command: `{doc['command']}`", "",
             "| reader | scale error: AbsRel of a depth map right in shape |", "| --- | ---: |"]
    lines += [f"| shapes, {row} | {value:.4f} |" for row, value in doc["bounds"].items()]
    if "model" in doc:
        m = doc["model"]
        lines += ["", f"{m['model']}, {m['images']} depth answers: AbsRel {m['abs_rel']:.4f}; with each picture's own "
                  f"scale {m['abs_rel_own_scale']:.4f}; scale error (mean |s - 1|) {m['scale_error']:.4f}."]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, metavar="synth:ROOT",
              help="`icv-data synth` scenes, e.g. synth:HELDOUT with HELDOUT from `icv-data synth --seed 1`.")
@click.option("--model", default=None,
              help="Also measure this model's own scale error (a bundled name or a model folder); without it, only the "
                   "bounds (no model is loaded).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N depth queries for the model.")
@click.option("--prompts", type=click.Choice(["fixed", "rephrased"]), default="rephrased", show_default=True,
              help="The model's instructions.")
@click.option("--seed", default=0, show_default=True, help="Seed of the instructions drawn for the model.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@debug_option
@one_line_errors
def main(data, model, limit, prompts, seed, out):
    """The least depth error that the metric scale alone leaves to a reader of shapes, and (--model) a model's own
    scale error, on synthetic scenes (see the module's docstring)."""
    annotations = read_annotations(data)
    words = ["python", "benchmarks/depth_scale_bound.py", "--data", data]
    if model:
        words += ["--model", model] + (["--limit", str(limit)] if limit else [])
        words += [w for flag, value, default in (("--prompts", prompts, "rephrased"), ("--seed", seed, 0))
                  if value != default for w in (flag, str(value))]
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join(words + ["--out", str(out)]), "data": data, "scenes": len(annotations),
           "machine": machine_description("cpu"), "bounds": bounds_row(annotations)}
    if model:
        doc["model"] = model_scale(model, data, limit, prompts, seed)
    save_report(out, "scale", doc, markdown(doc))


if __name__ == "__main__":
    main()

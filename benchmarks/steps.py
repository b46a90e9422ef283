"""Accuracy against UNet evaluations: what each sampler and timestep spacing buys per step (issue 13).

    python benchmarks/steps.py --model demo --out benchmarks/results/steps-demo
    python benchmarks/steps.py --model demo-1step --out benchmarks/results/steps-demo-1step \
        --also benchmarks/results/steps-demo/steps.json       # one-pass point on the sampled model's curves

Every setting (sampler x spacing x steps; default euler_a, euler, dpmpp_2m x leading, trailing, karras x 1, 2, 4,
10, 20, 50, 100) runs every query of held-out synthetic scenes through the runtime, and icv-eval's own code scores
it (training/evaluate.py `score` and `compute_metrics`, on icv_deploy/metrics.py). Without --data the scenes are
rendered once into OUT/heldout-scenes with `icv-data synth --seed 1`: training data uses seed 0, so none of them
was seen in training. UNet evaluations are counted, not computed: a wrapper around the backend's predict_noise
counts its calls and their batch rows, so a guided step counts 3 rows per query and a one-pass model 1.

OUT/steps.json   settings, machine, and per setting: counted UNet calls and rows per query, every metric
OUT/steps.md     one table per task (headline metric by sampler/spacing and steps) plus the counted evaluations
OUT/steps.png    one panel per task: headline metric against UNet evaluations per query (log scale)
OUT/cache/SETTING/predictions.rank0.jsonl   one line per finished query: a rerun resumes where it stopped

A one-pass model (icv_config.json "mode": "one_pass") has one setting, one_pass. --samplers, --spacings, --steps,
--limit and --scenes shrink the run (the tests run it in seconds on a tiny random model). Cost: queries x the sum
of the step counts x 9 sampler/spacing pairs guided UNet calls (about 11 queries per scene).
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import load_average, machine_description  # noqa: E402

from icv_deploy.atomic import atomic_path, write_json, write_text  # noqa: E402
from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402
from icv_deploy.errors import IcvError  # noqa: E402

SAMPLERS = ("euler_a", "euler", "dpmpp_2m")
SPACINGS = ("leading", "trailing", "karras")
STEPS = (1, 2, 4, 10, 20, 50, 100)
HELDOUT_SEED = 1  # training scenes use seed 0 (icv-data synth's default)
# task -> (metric key in icv_deploy.metrics' output, label, higher is better)
HEADLINE = {"segmentation": ("miou", "mIoU", True), "detection": ("map50", "mAP@0.5", True),
            "depth": ("abs_rel", "AbsRel", False), "classification": ("accuracy", "accuracy", True)}
# Settings that change the predictions: a resumed run must use the same ones.
RUN_KEYS = ("model_dir", "engine", "vae", "seed", "resolution", "prompts", "data", "tasks", "limit")


@dataclass(frozen=True)
class Setting:
    sampler: str  # a runtime sampler name, or "one_pass"
    spacing: str | None
    steps: int

    @property
    def name(self) -> str:
        return "one_pass" if self.sampler == "one_pass" else f"{self.sampler}-{self.spacing}-{self.steps}"

    @property
    def series(self) -> str:
        return "one pass" if self.sampler == "one_pass" else f"{self.sampler} / {self.spacing}"


class UNetCounter:
    """Counts the UNet calls (and their batch rows) a pipeline makes, by wrapping its backend's predict_noise."""

    def __init__(self, backend):
        self.backend, self.calls, self.rows = backend, 0, 0

    def __enter__(self):
        predict = self.backend.predict_noise

        def counted(sample, timestep, text_embeddings):
            self.calls += 1
            self.rows += int(sample.shape[0])
            return predict(sample, timestep, text_embeddings)

        self.backend.predict_noise = counted  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        del self.backend.predict_noise
        return False


def settings_for(pipe, samplers, spacings, steps) -> list[Setting]:
    if getattr(pipe, "one_pass", None) is not None:
        return [Setting("one_pass", None, 1)]
    return [Setting(sampler, spacing, n) for sampler in samplers for spacing in spacings for n in steps]


def run_setting(pipe, setting: Setting, queries, folder: Path, batch: int, seed: int, resolution, progress) -> dict:
    """Run (or resume) one setting over every query; its metrics, counted UNet work and time per query."""
    from icv_deploy.training.eval_queries import batches
    from icv_deploy.training.evaluate import PredictionLog, compute_metrics, read_records, score

    done = read_records(folder)
    todo = [g for g in ([q for q in group if q.key not in done] for group in batches(queries, batch)) if g]
    if todo:
        log = PredictionLog(folder, 0)
        kwargs = {} if setting.sampler == "one_pass" else {"sampler": setting.sampler, "spacing": setting.spacing,
                                                           "steps": setting.steps}
        if resolution is not None:
            kwargs["resolution"] = resolution
        for group in progress(todo, setting.name):
            loaded = [q.load() for q in group]
            t0 = time.perf_counter()
            with UNetCounter(pipe.backend) as counter:
                results = pipe.run_many(loaded[0].image, [q.instruction for q in group], task=group[0].task, seed=seed,
                                        **kwargs)
            seconds = (time.perf_counter() - t0) / len(group)
            for q, ex, res in zip(group, loaded, results):
                log.append({**score(q, ex, res), "seconds": round(seconds, 4), "unet_calls": counter.calls / len(group),
                            "unet_rows": counter.rows / len(group)})
    records = read_records(folder)
    wanted = [records[q.key] for q in queries]
    n = len(wanted)
    return {
        "setting": setting.name, "sampler": setting.sampler, "spacing": setting.spacing, "steps": setting.steps,
        "queries": n,
        "unet_calls_per_query": sum(r["unet_calls"] for r in wanted) / n,  # shared calls split between a batch's queries
        "unet_evaluations_per_query": sum(r["unet_rows"] for r in wanted) / n,  # batch rows: 3 per guided step
        "seconds_per_query": round(sum(r["seconds"] for r in wanted) / n, 4),
        "metrics": compute_metrics(wanted),
    }


def headline(entry: dict, task: str, dataset: str) -> float | None:
    value = entry["metrics"].get(task, {}).get(dataset, {}).get(HEADLINE[task][0])
    return None if value is None or value != value else float(value)


def columns(doc: dict) -> list[tuple[str, str]]:
    """(task, dataset) pairs present in the results, in the paper's task order."""
    found = {(t, d) for e in doc["results"] for t, by in e["metrics"].items() for d in by}
    return sorted(found, key=lambda td: (list(HEADLINE).index(td[0]), td[1]))


# ------------------------------------------------------------------------------------------------ outputs
def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# Accuracy against UNet evaluations: {s['model']}", "",
             f"{doc['queries']} queries from {', '.join(s['data'])}; engine {s['engine']}, seed {s['seed']}, "
             f"resolution {s['resolution'] or 'the model default'}; {doc['date']} on {doc['machine']['cpu']}.", "",
             f"Command: `{doc['command']}`", ""]
    if doc.get("random_weights"):
        lines += ["**Random weights:** this model was built from configs with random weights; these figures exercise "
                  "the benchmark and mean nothing about accuracy.", ""]
    results = doc["results"]
    steps = sorted({e["steps"] for e in results})
    series = list(dict.fromkeys((e["sampler"], e["spacing"]) for e in results))
    by = {(e["sampler"], e["spacing"], e["steps"]): e for e in results}

    def label(sampler, spacing):
        return "one pass" if sampler == "one_pass" else f"{sampler} / {spacing}"

    def table(title, cell):
        out = [f"## {title}", "", "| sampler / spacing | " + " | ".join(f"{n} steps" for n in steps) + " |",
               "| --- |" + " ---: |" * len(steps)]
        for sampler, spacing in series:
            cells = [cell(by[(sampler, spacing, n)]) if (sampler, spacing, n) in by else "" for n in steps]
            out.append(f"| {label(sampler, spacing)} | " + " | ".join(cells) + " |")
        return out + [""]

    for task, dataset in columns(doc):
        key, name, higher = HEADLINE[task]
        lines += table(f"{task} ({dataset}): {name}, {'higher' if higher else 'lower'} is better",
                       lambda e, t=task, d=dataset: _fmt(headline(e, t, d)))
    lines += table("UNet evaluations per query (counted: batch rows of every UNet call)",
                   lambda e: f"{e['unet_evaluations_per_query']:g}")
    for other in doc.get("also", []):
        lines += [f"Also plotted: {other['settings']['model']} ({other['path']})", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_plot(doc: dict, path: Path) -> None:
    """One panel per task: the headline metric against counted UNet evaluations per query (log x)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = columns(doc)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4.0), squeeze=False)
    colors = {"euler_a": "tab:blue", "euler": "tab:orange", "dpmpp_2m": "tab:green"}
    styles = {"leading": ":", "trailing": "-", "karras": "--"}
    runs = [(doc, "")] + [(other, f"{other['settings']['model']}: ") for other in doc.get("also", [])]
    for ax, (task, dataset) in zip(axes[0], panels):
        for k, (run, prefix) in enumerate(runs):
            groups: dict[tuple, list] = {}
            for e in run["results"]:
                groups.setdefault((e["sampler"], e["spacing"]), []).append(e)
            for (sampler, spacing), entries in groups.items():
                points = sorted((e["unet_evaluations_per_query"], headline(e, task, dataset)) for e in entries)
                points = [(x, y) for x, y in points if y is not None]
                if not points:
                    continue
                label = prefix + ("one pass" if sampler == "one_pass" else f"{sampler} / {spacing}")
                if sampler == "one_pass" or len(points) == 1:
                    ax.plot(*zip(*points), marker="*", markersize=12, linestyle="none", label=label,
                            color="black" if k else "tab:red")
                else:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label, color=colors.get(sampler, "tab:gray"),
                            linestyle=styles.get(spacing, "-"), alpha=1.0 if k == 0 else 0.5)
        key, name, higher = HEADLINE[task]
        ax.set_xscale("log")
        ticks = sorted({e["unet_evaluations_per_query"] for run, _ in runs for e in run["results"]})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)  # the counted values, not powers of ten
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("UNet evaluations per query (log; 3 per guided step)")
        ax.set_ylabel(f"{name} ({'higher' if higher else 'lower'} is better)")
        ax.set_title(f"{task} ({dataset})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, max(1, len(labels))), fontsize=7)
    fig.suptitle(f"{doc['settings']['model']}: accuracy against UNet evaluations ({doc['queries']} held-out queries)")
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 5), 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the run
def _names(value: str, allowed, what: str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise IcvError(f"--{what}: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(map(str, allowed))}")
    return items


def _steps(value: str) -> list[int]:
    try:
        steps = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise IcvError(f"--steps {value!r}: give step counts separated by commas, e.g. 1,2,4,10") from None
    if not steps or steps[0] < 1 or steps[-1] > 1000:
        raise IcvError(f"--steps {value!r}: step counts must lie between 1 and 1000")
    return steps


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="A bundled model (demo, demo-1step), a model folder or hub id, or an ONNX "
              "folder with --engine onnx [default: $ICV_MODEL, else demo].")
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--vae", type=click.Choice(["full", "tiny"]), default=None, help="Autoencoder [default: the model's].")
@click.option("--data", "data", multiple=True, metavar="SOURCE",
              help="icv-eval data (KIND:ROOT, e.g. synth:data/heldout); repeatable [default: --scenes held-out synthetic "
                   "scenes rendered with seed 1 into OUT/heldout-scenes].")
@click.option("--scenes", default=20, show_default=True, type=click.IntRange(1), help="Held-out scenes to render (no --data).")
@click.option("--scene-size", default=128, show_default=True, type=click.IntRange(64, 512), help="Their size in pixels.")
@click.option("--tasks", default=",".join(HEADLINE), show_default=True, help="Comma-separated tasks.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N queries per dataset and task.")
@click.option("--samplers", default=",".join(SAMPLERS), show_default=True, help="Comma-separated runtime samplers.")
@click.option("--spacings", default=",".join(SPACINGS), show_default=True, help="Comma-separated timestep spacings.")
@click.option("--steps", "steps_list", default=",".join(map(str, STEPS)), show_default=True, help="Comma-separated step counts.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed (every query) and classification prompt colours.")
@click.option("--resolution", type=click.IntRange(16), default=None, help="Working resolution [default: the model's].")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1),
              help="Queries of the same image and task per call (one UNet batch; results do not depend on it).")
@click.option("--also", "also", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Another run's steps.json to draw in the same plot (e.g. a one-pass model against its base); repeatable.")
@click.option("--restart", is_flag=True, help="Discard cached predictions of OUT instead of resuming.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (resumable).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@debug_option
@one_line_errors
def main(model, engine, device, vae, data, scenes, scene_size, tasks, limit, samplers, spacings, steps_list, seed,
         resolution, batch, also, restart, out, quiet):
    """Accuracy of each sampler, spacing and step count against the UNet evaluations it costs, per task."""
    import json

    from tqdm.auto import tqdm

    import icv_deploy
    from icv_deploy.model_files import default_model, resolve_model
    from icv_deploy.sampling import SAMPLERS as RUNTIME_SAMPLERS
    from icv_deploy.schedules import SPACINGS as RUNTIME_SPACINGS
    from icv_deploy.training.eval_queries import collect_queries
    from icv_deploy.training.evaluate import _json_safe as json_safe  # NaN (undefined metric) -> null

    samplers = _names(samplers, RUNTIME_SAMPLERS, "samplers")
    spacings = _names(spacings, RUNTIME_SPACINGS, "spacings")
    task_list = _names(tasks, tuple(HEADLINE), "tasks")
    steps = _steps(steps_list)
    others = []
    for path in also:
        try:
            others.append({**json.loads(path.read_text()), "path": str(path)})
        except ValueError:
            raise IcvError(f"--also {path}: not a steps.json written by this script") from None
    model = model or default_model()
    model_dir = resolve_model(model)
    data_label = list(data)
    if not data:
        from icv_deploy.training.synthetic import write_scenes

        write_scenes(out / "heldout-scenes", scenes, seed=HELDOUT_SEED, size=scene_size, progress=not quiet)
        data = (f"synth:{out / 'heldout-scenes'}",)
        # Named relative to OUT, so that a moved OUT still resumes (query keys do not hold the path either).
        data_label = [f"synth:OUT/heldout-scenes (icv-data synth --seed {HELDOUT_SEED} --size {scene_size})"]
    queries = collect_queries(list(data), tuple(task_list), limit, "fixed", seed)

    run = {"model": str(model), "model_dir": str(model_dir), "engine": engine, "vae": vae, "seed": seed,
           "resolution": resolution, "prompts": "fixed", "data": data_label, "tasks": task_list, "limit": limit}
    cache = out / "cache"
    run_file = out / "run.json"
    if restart:
        shutil.rmtree(cache, ignore_errors=True)
    elif run_file.exists():
        saved = json.loads(run_file.read_text())
        diff = [k for k in RUN_KEYS if saved.get(k) != run[k]]
        if diff:
            raise IcvError(f"{out} holds results of another run ({', '.join(f'{k} {saved.get(k)!r}' for k in diff)}); "
                           "use another --out, the same options, or --restart")
    write_json(run_file, run)

    pipe = icv_deploy.load(model_dir, engine=engine, device=device, vae=vae)
    pipe.progress = False

    def progress(groups, name):
        return tqdm(groups, desc=name, unit="batch", leave=False, disable=quiet)

    results = []
    for setting in settings_for(pipe, samplers, spacings, steps):
        results.append(run_setting(pipe, setting, queries, cache / setting.name, batch, seed, resolution, progress))
        if not quiet:
            click.echo(f"{setting.name}: {results[-1]['unet_evaluations_per_query']:g} UNet evaluations per query", err=True)

    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "machine": {**machine_description(device), "load_average_at_end": load_average()},
           "settings": run, "queries": len(queries), "random_weights": bool(getattr(pipe, "random_weights", False)),
           "one_pass": pipe.one_pass.to_json() if getattr(pipe, "one_pass", None) else None,
           "headline_metrics": {t: HEADLINE[t][0] for t in task_list}, "results": results,
           "also": [{"path": o["path"], "settings": o["settings"], "results": o["results"]} for o in others]}
    doc = json_safe(doc)
    write_json(out / "steps.json", doc)
    write_text(out / "steps.md", markdown(doc))
    write_plot(doc, out / "steps.png")
    click.echo(f"wrote {out / 'steps.md'}, {out / 'steps.json'} and {out / 'steps.png'}")
    return doc


if __name__ == "__main__":
    main()

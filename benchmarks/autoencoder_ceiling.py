"""The autoencoder's ceiling: how well could a perfect UNet answer through this model's VAE? (issue 12)

    python benchmarks/autoencoder_ceiling.py --model demo --data synth:HELDOUT --limit 60 --out OUT

A diffusion model paints its answer in latent space and the VAE decoder turns it into pixels, so no UNet can score
better than the target pictures themselves score after a trip through the autoencoder. Every query's exact target
(the task encodings of DESIGN.md 6, painted as `icv-data build` paints training targets: training/pairs.make_pair)
is scored twice by icv-eval's own scoring (training/evaluate.score and compute_metrics):

    painted        the runtime's decoders read the exact target: their own floor (depth is quantised to grey levels)
    autoencoded    the target encoded (posterior mode, as the runtime encodes images) and decoded by the model's VAE:
                   the best a UNet that predicted the target's latent exactly could score

The gap between the model's own figures (icv-eval) and the autoencoded row is the UNet's; the gap between the
autoencoded row and the targets of issue 12 is the autoencoder's. OUT/ceiling.json (metrics, settings, machine) and
OUT/ceiling.md (the table).
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import machine_description, save_report  # noqa: E402
from steps import HEADLINE  # noqa: E402

from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402

ROWS = ("painted", "autoencoded")


def answers(pipe, query, example, resolution: int) -> dict:
    """{row: the record icv-eval's `score` makes} for one query: its exact target read as painted and after the
    autoencoder."""
    from icv_deploy import images
    from icv_deploy.tasks.decoders import decode
    from icv_deploy.training.evaluate import score
    from icv_deploy.tasks.encodings import encode_segmentation
    from icv_deploy.training.pairs import make_pair, resized

    colors = query.colors or (None, None)
    pair = make_pair(example, resolution, *colors)
    if pair is not None:
        target = pair[1]
    else:  # nothing to show (a category absent from the picture): an empty mask, or the picture without boxes
        image = resized(example, resolution).image
        target = encode_segmentation(np.zeros(image.shape[:2], bool)) if query.task == "segmentation" else image
    autoencoded = images.to_uint8(pipe.backend.decode_latents(pipe.encode_image(target)))[0]
    route = SimpleNamespace(color_if_present=colors[0], color_if_absent=colors[1])
    out_size = example.image.shape[:2]
    records = {}
    for row, visual in zip(ROWS, (target, autoencoded)):
        fields = decode(query.task, visual, route, out_size)
        records[row] = score(query, example, SimpleNamespace(visual=visual, colors=query.colors, **fields))
    return records


def command(model, data, tasks, limit, prompts, seed, resolution, out) -> str:
    """The command line of this run, from the values it ran with (under a test runner sys.argv is the runner's)."""
    words = ["python", "benchmarks/autoencoder_ceiling.py", "--model", model or "demo"]
    words += [w for source in data for w in ("--data", source)]
    for flag, value, default in (("--tasks", tasks, ",".join(HEADLINE)), ("--limit", limit, None),
                                 ("--prompts", prompts, "rephrased"), ("--seed", seed, 0), ("--resolution", resolution, None)):
        if value != default:
            words += [flag, str(value)]
    return shlex.join([*words, "--out", str(out)])


def markdown(doc: dict) -> str:
    lines = [f"# The autoencoder's ceiling: {doc['model']}", "",
             f"{doc['queries']} queries from {', '.join(doc['data'])}, resolution {doc['resolution']}; {doc['date']} on "
             f"{doc['machine']['cpu']}.", "", f"Command: `{doc['command']}`", "",
             "| target | " + " | ".join(f"{task} {label}" for task, (_, label, _) in HEADLINE.items()) + " |",
             "| --- |" + " ---: |" * len(HEADLINE)]
    for row in ROWS:
        cells = []
        for task, (key, _, _) in HEADLINE.items():
            value = next(iter(doc["results"][row].get(task, {}).values()), {}).get(key)
            cells.append("n/a" if value is None else f"{value:.3f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="A bundled model (demo, demo-1step) or a model folder [default: demo].")
@click.option("--data", "data", multiple=True, required=True, metavar="SOURCE",
              help="icv-eval data (KIND:ROOT, e.g. synth:HELDOUT with HELDOUT from `icv-data synth --seed 1`); repeatable.")
@click.option("--tasks", default=",".join(HEADLINE), show_default=True, help="Comma-separated tasks.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N queries per dataset and task.")
@click.option("--prompts", type=click.Choice(["fixed", "rephrased"]), default="rephrased", show_default=True,
              help="Instructions (they only choose the classification colours here).")
@click.option("--seed", default=0, show_default=True, help="Seed of the classification colours.")
@click.option("--resolution", type=click.IntRange(16), default=None,
              help="Working size the targets are painted at [default: the model's]; e.g. scenes rendered at 256 px and "
                   "--resolution 256 ask what the same autoencoder would keep at twice the size.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@debug_option
@one_line_errors
def main(model, data, tasks, limit, prompts, seed, resolution, out):
    """Score every held-out query's exact target as painted and after the model's autoencoder (see the module's
    docstring): what the decoders and the VAE allow, whatever the UNet."""
    from tqdm.auto import tqdm

    import icv_deploy
    from icv_deploy.training.eval_queries import collect_queries
    from icv_deploy.training.evaluate import compute_metrics

    pipe = icv_deploy.load(model)
    resolution = resolution or pipe.defaults["resolution"]
    queries = collect_queries(list(data), [t for t in tasks.split(",") if t], limit, prompts, seed)
    records = {row: [] for row in ROWS}
    for query in tqdm(queries, desc="targets", unit="query"):
        for row, record in answers(pipe, query, query.load(), resolution).items():
            records[row].append(record)
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command(model, data, tasks, limit, prompts, seed, resolution, out),
           "model": pipe.source, "data": list(data), "queries": len(queries), "resolution": resolution,
           "machine": machine_description("cpu"), "results": {row: compute_metrics(rs) for row, rs in records.items()}}
    save_report(out, "ceiling", doc, markdown(doc))


if __name__ == "__main__":
    main()

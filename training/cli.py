"""`icv-data`: build the instruction-tuning dataset (synthetic scenes, prompt pool, dataset, picture grid).

    icv-data synth --out data/synth --num 2000 --seed 0 --size 128
    icv-data build --source synth:data/synth --source pets:/data/oxford-iiit-pet --out data/train --prompts rephrased
    icv-data grid data/train --out grid.png
    icv-data paraphrase --model humarin/chatgpt_paraphraser_on_T5_base --out my_pool.json
"""

from __future__ import annotations

import click

from icv_deploy.cli_common import debug_option, one_line_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Build InstructCV instruction-tuning data: adapters for COCO, ADE20K, NYUv2, Oxford-IIIT Pets and
    synthetic scenes, fixed or paraphrased prompts, a Hugging Face `datasets` folder for training."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the scenes to.")
@click.option("--num", default=200, show_default=True, type=click.IntRange(1), help="Number of scenes.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same scenes, on any machine.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(64, 512), help="Image side in pixels.")
@debug_option
@one_line_errors
def synth(out, num, seed, size):
    """Render synthetic scenes with exact depth, masks, boxes and labels.

    A textured ground plane in perspective, a backdrop wall and 1 to 4 objects (ball, cube, cylinder, cone,
    pyramid) in several colours at different distances. Files: rgb/ID.png, depth/ID.png (16-bit, mm),
    instances/ID.png (0 = background, k = k-th object), annotations/ID.json, synth.json. Rerunning resumes.
    """
    from .synthetic import write_scenes

    write_scenes(out, num, seed=seed, size=size)
    click.echo(f"{num} scenes in {out}")


@main.command()
@click.option("--source", "sources", multiple=True, required=True, metavar="KIND:ROOT",
              help="A dataset to draw from; repeatable. KIND: coco, ade20k, nyuv2 (ROOT the labeled .mat file "
                   "or a folder), pets, synth. KIND[SPLIT]:ROOT picks that source's split.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (datasets.load_from_disk).")
@click.option("--prompts", type=click.Choice(["fixed", "rephrased"]), default="fixed", show_default=True,
              help="fixed: one template per task (FP); rephrased: a paraphrase from the pool per example (RP).")
@click.option("--split", default=None, help="Split of every source (default: each source's training split); "
                                             "train/val/test are understood by all.")
@click.option("--max-per-source", type=click.IntRange(1), default=None, help="Cap on examples drawn from each source.")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling, order, prompts and colours.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(0),
              help="Short side resized to SIZE, then centre crop SIZE x SIZE; 0 keeps the native size.")
@click.option("--task", "tasks", multiple=True, type=click.Choice(["segmentation", "detection", "depth", "classification"]),
              help="Only these tasks (repeatable; default all).")
@click.option("--no-balance", is_flag=True, help="Keep every example (default: every task is cut to the size of the smallest one).")
@click.option("--pool", "pool_file", type=click.Path(dir_okay=False), default=None,
              help="Paraphrase pool JSON for --prompts rephrased (default: the one shipped).")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1), help="Examples per resumable shard.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Processes writing shards.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--restart", is_flag=True, help="Discard an unfinished build in OUT.work instead of resuming it.")
@click.option("--yes-radius", type=click.IntRange(0), default=None,
              help="Training curriculum: paint a present classification answer as the category's mask grown by "
                   "this many pixels, in the first colour on the second, instead of the solid card "
                   "(training/yes_no_curriculum.py; sources that give masks only).")
@click.option("--colors", default=None, metavar="FIRST,SECOND",
              help="Every classification instruction names this colour pair (shown if present, if absent) instead of "
                   "one drawn per example, e.g. blue,black.")
@click.option("--box-width", type=int, default=None, metavar="PIXELS",
              help="Detection outlines this many pixels wide at --size (default: about 1/128 of the long side). "
                   "Models trained on the build record it (icv_config.json box_line_fraction) and the runtime reads "
                   "their boxes with it.")
@debug_option
@one_line_errors
def build(sources, out, prompts, split, max_per_source, seed, size, tasks, no_balance, pool_file, shard_size, workers,
          overwrite, restart, yes_radius, colors, box_width):
    """Materialise the paired dataset as a Hugging Face `datasets` folder.

    Columns: input_image, edit_prompt, edited_image (the visual target), task, category, source, image_id.
    Balanced across tasks: every task gets as many examples as the smallest task has (--no-balance keeps
    all). Augmentation is left to training. Interrupted? Run the same command again: it resumes (a finished
    build of the same options is kept as it is).
    """
    from rich.console import Console

    from .build import build as run_build, summary_table

    dataset = run_build(list(sources), out, prompts=prompts, split=split, max_per_source=max_per_source, seed=seed,
                        size=size, balance=not no_balance, shard_size=shard_size, pool_file=pool_file,
                        tasks=list(tasks) or None, overwrite=overwrite, restart=restart, workers=workers,
                        yes_radius=yes_radius, colors=colors.split(",") if colors else None, box_width=box_width)
    Console().print(summary_table(dataset))
    click.echo(f"dataset written to {out}")


@main.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--per-task", default=4, show_default=True, type=click.IntRange(1), help="Examples per task (row).")
@debug_option
@one_line_errors
def grid(dataset_dir, out, per_task):
    """Save a picture grid of a built dataset: per task, input | target pairs with their instructions."""
    import datasets

    from .grid import save_grid

    save_grid(datasets.load_from_disk(dataset_dir), out, per_task=per_task)
    click.echo(f"grid written to {out}")


@main.command()
@click.option("--model", default=None, help="T5 paraphraser: hub id or local folder "
                                           "[default: humarin/chatgpt_paraphraser_on_T5_base].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Pool JSON to write.")
@click.option("--pool", "pool_file", type=click.Path(dir_okay=False), default=None,
              help="Pool to extend (default: the shipped one).")
@click.option("--per-template", default=4, show_default=True, type=click.IntRange(1), help="Paraphrases sampled per template.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(4), help="Longest paraphrase, in tokens.")
@debug_option
@one_line_errors
def paraphrase(model, out, pool_file, per_template, seed, device, max_new_tokens):
    """Extend the paraphrase pool with a T5 paraphrasing model (the paper's recipe).

    Every kept paraphrase keeps the task's placeholders and routes to the right task in the runtime.
    """
    import json

    from icv_deploy.atomic import write_json

    from .paraphrase import DEFAULT_MODEL, extend_pool, load_t5_generator
    from .prompts import POOL_FILE, load_pool

    pool = load_pool(pool_file)
    generate = load_t5_generator(model or DEFAULT_MODEL, device=device, seed=seed, max_new_tokens=max_new_tokens)
    new_pool, added = extend_pool(pool, generate, per_template=per_template)
    source = pool_file or POOL_FILE
    note = json.loads(open(source, encoding="utf-8").read()).get("_about", "")
    write_json(out, {"_about": note + f" Extended with {model or DEFAULT_MODEL} by icv-data paraphrase.", **new_pool}, indent=1)
    click.echo(f"pool written to {out}: " + ", ".join(f"{t} +{n}" for t, n in added.items()))


if __name__ == "__main__":
    main()

"""How the answers are wrong: does the model answer about the named object? (issue 12)

    python benchmarks/answer_anatomy.py --model demo --data synth:HELDOUT --limit 60 --out OUT

icv-eval says how often an answer is right; this says where a wrong one goes, on synthetic scenes (icv-data synth),
whose instance maps name every object's pixels:

    segmentation    where the predicted mask lies: on the named category, on other objects, on floor and wall; and
                    its IoU (summed over the set) against the named category and against all objects. A model that
                    has learnt "objects" but not "the cube" scores the second above the first, and puts about as
                    much of its mask on the named category as a mask of every object would. Each instruction is
                    also asked about a category the picture does not hold (the category word swapped): its mask
                    should be empty, not the named category's mask again.
    classification  which colour the answer is nearest in the palette: the instruction's colour-if-present, its
                    colour-if-absent or another one, by the true answer; and where the first sampling step's answer
                    (the clean latent predicted from pure noise) lies against the two colours' latents: near the
                    segment between them, the colour words are read; at its ends, the decision (is the cube there?)
                    is made. A mixture halfway decodes to a third colour, so "another colour" alone does not say
                    which of the two failed.
    detection       how far the answer is from the input (mean absolute difference in grey levels; a copy of the
                    input scores near 0) and where its blue pixels are: how much of the target's outline they
                    cover and what share of them lies within 2 pixels of it.

Each answer is the runtime's (`icv_deploy.load(model)(image, instruction)`, the model's default setting unless
--steps / --sampler). OUT/anatomy.json (sums, settings, machine) and OUT/anatomy.md (the tables).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import machine_description, save_report  # noqa: E402

from icv_deploy.cli_common import debug_option, one_line_errors  # noqa: E402
from icv_deploy.errors import IcvError  # noqa: E402
from icv_deploy.training.prompts import PROMPT_MODES  # noqa: E402

TASKS = ("segmentation", "classification", "detection")


def segmentation_counts(mask: np.ndarray, instances: np.ndarray, named_ids) -> dict:
    """Pixel counts of a predicted mask against an instance map (0: floor and wall) and the named category's ids."""
    named = np.isin(instances, list(named_ids))
    objects = instances > 0
    return {"predicted": int(mask.sum()), "named": int(named.sum()), "objects": int(objects.sum()),
            "on_named": int((mask & named).sum()),
            "on_other_objects": int((mask & objects & ~named).sum()), "on_background": int((mask & ~objects).sum()),
            "union_named": int((mask | named).sum()), "inter_all": int((mask & objects).sum()),
            "union_all": int((mask | objects).sum())}


def absent_category_counts(mask: np.ndarray, absent_mask: np.ndarray) -> dict:
    """The mask for the named category against the mask the same instruction gets for a category that is not in
    the picture (which should be empty)."""
    return {"probes": 1, "probe_named_area": int(mask.sum()), "probe_absent_area": int(absent_mask.sum()),
            "probe_inter": int((mask & absent_mask).sum()), "probe_union": int((mask | absent_mask).sum())}


def with_category(instruction: str, category: str, other: str) -> str | None:
    """The instruction about `other` instead of `category` (None when the word is not in it as a word)."""
    changed, n = re.subn(rf"\b{re.escape(category)}\b", other, instruction)
    return changed if n else None


def nearest_color(visual: np.ndarray) -> str:
    """The palette colour (icv_deploy.tasks.encodings.COLORS) nearest the answer's per-channel median, the colour
    the runtime's classification decoder reads."""
    from icv_deploy.tasks.encodings import COLORS

    median = np.median(visual.reshape(-1, 3).astype(np.float64), axis=0)
    return min(COLORS, key=lambda name: float(np.linalg.norm(median - np.array(COLORS[name], np.float64))))


def classification_outcome(visual: np.ndarray, colors: tuple[str, str]) -> str:
    """'present colour', 'absent colour' or 'another colour': which of the instruction's colours the answer is."""
    from icv_deploy.tasks.encodings import COLORS

    painted = COLORS[nearest_color(visual)]
    if painted == COLORS[colors[0]]:  # grey and gray are one colour
        return "present colour"
    return "absent colour" if painted == COLORS[colors[1]] else "another colour"


def between_colors(answer: np.ndarray, present: np.ndarray, absent: np.ndarray) -> tuple[float, float]:
    """(position, distance) of an answer latent on the segment from the absent colour's latent (position 0) to the
    present colour's (1), both as shares of the segment's length (vectors: per-channel means of flat latents). An
    answer that reads both colour words but not the picture lies on the segment near the prior, a mixture whose
    decoded colour is often a third one; one that reads the picture too lies at an end."""
    segment = present - absent
    position = float(np.clip((answer - absent) @ segment / (segment @ segment), 0.0, 1.0))
    distance = float(np.linalg.norm(answer - (absent + position * segment)) / np.linalg.norm(segment))
    return position, distance


class FirstStep:
    """The first sampling step's clean-latent prediction for a classification query (x0 at the noisiest timestep,
    where the answer is decided) against the latents of the instruction's two colours painted flat."""

    def __init__(self, pipe, seed: int):
        self.pipe, self.seed, self.cards = pipe, seed, {}

    def card(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        from icv_deploy.tasks.encodings import encode_classification

        if (name, shape) not in self.cards:
            picture = encode_classification(True, shape, name, name)  # the answer card, painted flat in `name`
            latent = self.pipe.encode_image(picture) * self.pipe.backend.info.scaling_factor
            self.cards[name, shape] = latent.float().mean(dim=(0, 2, 3)).cpu().numpy()
        return self.cards[name, shape]

    def __call__(self, image: np.ndarray, instruction: str, colors: tuple[str, str]) -> tuple[float, float]:
        """(position, distance) of the query's first-step answer (between_colors), at the model's working size and
        guidance; one Euler step with trailing spacing is exactly the clean latent predicted from pure noise."""
        from icv_deploy import images as imgs

        pipe, settings = self.pipe, self.pipe.defaults
        shape = imgs.working_size(*image.shape[:2], settings["resolution"], pipe.backend.info.vae_scale_factor)
        text, empty = pipe.encode_instructions([instruction])
        answer = pipe.sample(text, empty, pipe.encode_image(imgs.resize(image, shape)), 1, "euler", self.seed,
                             settings["guidance_scale"], settings["image_guidance_scale"], "trailing")
        answer = answer.float().mean(dim=(0, 2, 3)).cpu().numpy()
        return between_colors(answer, self.card(colors[0], shape), self.card(colors[1], shape))


def detection_counts(visual: np.ndarray, image: np.ndarray, boxes: np.ndarray, line_fraction: float | None = None) -> dict:
    """How far the answer is from the input, and its blue pixels against the target's outline (the input with
    the boxes painted as icv-data build paints them, `line_fraction` wide) and a band of 2 pixels around it."""
    import cv2

    from icv_deploy.tasks.decoders import blue_mask
    from icv_deploy.tasks.encodings import BOX_COLOR, encode_detection

    if visual.shape != image.shape:  # the model worked at another size: compare at the input's
        visual = cv2.resize(visual, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    outline = np.all(encode_detection(image, boxes, line_fraction) == BOX_COLOR, axis=2) & ~np.all(image == BOX_COLOR, axis=2)
    band = cv2.dilate(outline.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    blue = blue_mask(visual) > 0
    return {"pixels": int(image.shape[0] * image.shape[1]),
            "abs_diff_sum": float(np.abs(visual.astype(np.float64) - image.astype(np.float64)).mean(axis=2).sum()),
            "outline": int(outline.sum()), "outline_blue": int((outline & blue).sum()),
            "blue": int(blue.sum()), "blue_in_band": int((blue & band).sum())}


def summary(task: str, totals: dict, queries: int) -> dict:
    """The reported figures of one task from its summed counts."""
    def share(part, whole):
        return None if totals.get(whole, 0) == 0 else totals[part] / totals[whole]

    if task == "segmentation":
        return {"queries": queries, "mask_on_named": share("on_named", "predicted"),
                "mask_on_other_objects": share("on_other_objects", "predicted"),
                "mask_on_background": share("on_background", "predicted"),
                "iou_named": share("on_named", "union_named"), "iou_all_objects": share("inter_all", "union_all"),
                "all_objects_answer_on_named": share("named", "objects"),
                "absent_category_area_ratio": share("probe_absent_area", "probe_named_area"),
                "iou_named_vs_absent_category": share("probe_inter", "probe_union"), "probes": totals.get("probes", 0)}
    if task == "detection":
        return {"queries": queries, "mean_abs_diff_to_input": share("abs_diff_sum", "pixels"),
                "outline_covered_by_blue": share("outline_blue", "outline"),
                "blue_pixels_per_query": totals.get("blue", 0) / max(queries, 1),
                "blue_within_2px_of_outline": share("blue_in_band", "blue")}
    return {"queries": queries, **{f"truly {truth}": dict(outcomes) for truth, outcomes in totals.items()}}


def first_step_summary(rows: list[tuple[bool, float, float]]) -> dict | None:
    """The first-step answers of the classification queries, (present, position, distance) each: how far off the
    segment between the two colours they lie, where on it by the truth, and how well the position tells present from
    absent (ROC AUC: 0.5 is chance, 1 a position that always places a present query nearer its present colour)."""
    from sklearn.metrics import roc_auc_score

    if not rows:
        return None
    present, position, distance = (np.array(column, np.float64) for column in zip(*rows))
    both = 0 < present.sum() < len(present)
    return {"median_distance": float(np.median(distance)),
            "mean_position_present": float(position[present == 1].mean()) if present.any() else None,
            "mean_position_absent": float(position[present == 0].mean()) if not present.all() else None,
            "auc": float(roc_auc_score(present, position)) if both else None}


def markdown(doc: dict) -> str:
    seg, cls, det = (doc["results"].get(task) for task in TASKS)
    lines = [f"# How the answers are wrong: {doc['model']}", "",
             f"{doc['data']}, {doc['date']} on {doc['machine']['cpu']}.", ""]

    def cell(value):
        return "n/a" if value is None else f"{value:.3f}"

    if seg:
        lines += [f"Segmentation ({seg['queries']} queries): where the predicted mask's pixels lie, and its IoU.", "",
                  "| on the named category | on other objects | on floor and wall | IoU, named category | "
                  "IoU, all objects |", "| ---: | ---: | ---: | ---: | ---: |",
                  "| " + " | ".join(cell(seg[k]) for k in ("mask_on_named", "mask_on_other_objects", "mask_on_background",
                                                          "iou_named", "iou_all_objects")) + " |", "",
                  f"An answer that masked every object exactly would put {cell(seg['all_objects_answer_on_named'])} of "
                  "its pixels on the named category: a share near that means the category word is not used.", "",
                  f"The same instructions about a category that is not in the picture ({seg['probes']} queries), "
                  "which should get an empty mask:", "",
                  "| mask area, relative to the named category's answer | IoU with that answer |", "| ---: | ---: |",
                  f"| {cell(seg['absent_category_area_ratio'])} | {cell(seg['iou_named_vs_absent_category'])} |", ""]
    if cls:
        outcomes = ("present colour", "absent colour", "another colour")
        lines += [f"Classification ({cls['queries']} queries): the palette colour nearest the answer.", "",
                  "| truth | " + " | ".join(outcomes) + " |", "| --- |" + " ---: |" * 3]
        for truth in ("present", "absent"):
            counts = cls.get(f"truly {truth}", {})
            lines.append(f"| {truth} | " + " | ".join(str(counts.get(o, 0)) for o in outcomes) + " |")
        lines.append("")
        if first := cls.get("first_step"):
            lines += ["The first sampling step's answer (the clean latent predicted from pure noise, where the answer "
                      "is decided) on the segment from the absent colour's latent (0) to the present colour's (1):", "",
                      "| distance off the segment (share of its length, median) | mean position, truly present | "
                      "mean position, truly absent | ROC AUC of the position |", "| ---: | ---: | ---: | ---: |",
                      "| " + " | ".join(cell(first[k]) for k in ("median_distance", "mean_position_present",
                                                                 "mean_position_absent", "auc")) + " |", "",
                      "Near the segment but between its ends: the colour words are read and the decision is not made; "
                      "such a mixture often decodes to a third colour.", ""]
    if det:
        lines += [f"Detection ({det['queries']} queries): the answer against the input and the target's outlines.", "",
                  "| mean abs. difference to the input (grey levels) | outline covered by blue | blue pixels per query "
                  "| blue within 2 px of an outline |", "| ---: | ---: | ---: | ---: |",
                  f"| {cell(det['mean_abs_diff_to_input'])} | {cell(det['outline_covered_by_blue'])} | "
                  f"{det['blue_pixels_per_query']:.1f} | {cell(det['blue_within_2px_of_outline'])} |", ""]
    return "\n".join(lines)


class Scenes:
    """Instance maps and object lists of an `icv-data synth` folder."""

    def __init__(self, source: str):
        from icv_deploy.training.build import parse_source
        from icv_deploy.training.datasets.synth import SynthAdapter

        kind, root, split = parse_source(source)
        if kind != "synth":
            raise IcvError(f"--data {source}: answer_anatomy needs synthetic scenes (synth:ROOT), which carry "
                           "instance maps")
        self.scenes = SynthAdapter(root, split)  # reads and checks the annotations

    def objects(self, image_id: str, category: str) -> tuple[np.ndarray, set[int], set[str]]:
        """(instance map, the ids of `category`'s objects, the categories in the picture)."""
        from icv_deploy.training.datasets.base import read_label_png

        instances = read_label_png(self.scenes.root / "instances" / f"{image_id}.png", what="instance map")
        objects = self.scenes.annotation(image_id)["objects"]
        return instances, {o["id"] for o in objects if o["category"] == category}, {o["category"] for o in objects}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="A bundled model (demo, demo-1step) or a model folder [default: demo].")
@click.option("--data", required=True, metavar="synth:ROOT",
              help="Held-out synthetic scenes (ROOT from `icv-data synth --seed 1`).")
@click.option("--tasks", default=",".join(TASKS), show_default=True, help="Comma-separated tasks.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N queries per task.")
@click.option("--prompts", type=click.Choice(PROMPT_MODES), default="rephrased",
              show_default=True, help="Instructions, as icv-eval's --prompts.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampling steps [default: the model's].")
@click.option("--sampler", default=None, help="Sampler [default: the model's].")
@click.option("--seed", default=0, show_default=True, help="Sampling seed and classification colours.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@debug_option
@one_line_errors
def main(model, data, tasks, limit, prompts, steps, sampler, seed, out):
    """Run held-out synthetic queries through the model and say how its answers are wrong: where a mask lies (the
    named category, other objects, floor and wall) and what the same instruction paints for a category the picture
    lacks; which colour a classification answer is (the instruction's two, or another); how far a detection answer is
    from its input and where its blue pixels fall. Writes OUT/anatomy.json and OUT/anatomy.md."""
    from collections import Counter

    from tqdm.auto import tqdm

    import icv_deploy
    from icv_deploy.training.eval_queries import collect_queries
    from icv_deploy.training.synthetic import CATEGORIES

    wanted = [t for t in tasks.split(",") if t]
    if unknown := sorted(set(wanted) - set(TASKS)):
        raise IcvError(f"--tasks: {', '.join(unknown)} not among {', '.join(TASKS)}")
    scenes = Scenes(data)
    pipe = icv_deploy.load(model)
    pipe.progress = False
    queries = collect_queries([data], wanted, limit, prompts, seed)
    totals = {"segmentation": Counter(), "detection": Counter(), "classification": {}}
    first_step, first_steps = FirstStep(pipe, seed), []
    counts = Counter()
    for query in tqdm(queries, desc="answers", unit="query"):
        example = query.load()
        res = pipe(example.image, query.instruction, task=query.task, steps=steps, sampler=sampler, seed=seed)
        counts[query.task] += 1
        if query.task == "segmentation":
            instances, named_ids, present = scenes.objects(query.image_id, query.category)
            totals["segmentation"].update(segmentation_counts(res.mask, instances, named_ids))
            absent = [c for c in CATEGORIES if c not in present]
            if absent and (other := with_category(query.instruction, query.category, absent[counts[query.task] % len(absent)])):
                probe = pipe(example.image, other, task=query.task, steps=steps, sampler=sampler, seed=seed)
                totals["segmentation"].update(absent_category_counts(res.mask, probe.mask))
        elif query.task == "detection":
            outline = detection_counts(res.visual, example.image, example.boxes, pipe.box_line_fraction)
            totals["detection"].update(outline)
        else:
            truth = totals["classification"].setdefault("present" if example.present else "absent", Counter())
            truth[classification_outcome(res.visual, res.colors)] += 1
            first_steps.append((bool(example.present), *first_step(example.image, query.instruction, res.colors)))
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": pipe.source,
           "data": data, "prompts": prompts, "steps": steps, "sampler": sampler, "seed": seed,
           "machine": machine_description("cpu"),
           "results": {task: summary(task, totals[task], counts[task]) for task in wanted}}
    if "classification" in wanted:
        doc["results"]["classification"]["first_step"] = first_step_summary(first_steps)
    save_report(out, "anatomy", doc, markdown(doc))


if __name__ == "__main__":
    main()

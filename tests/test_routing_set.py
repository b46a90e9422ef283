"""The routing test set (tests/data/routing_phrasings.json): phrasings people write, none from the training pool.

Accuracy must be at least 95 %, and no routed category may carry words the instruction used for something
else: task words ("segment", "box", "depth"), sentence words ("if", "otherwise", "it"), or colour words that
are not part of the category (answer colours, painting colours).
"""

import json
import re
from pathlib import Path

import pytest

from icv_deploy.errors import InstructionError
from icv_deploy.tasks.encodings import COLORS
from icv_deploy.tasks.routing import Route, route
from icv_deploy.training.prompts import TEMPLATES, load_pool

DATA = json.loads((Path(__file__).parent / "data" / "routing_phrasings.json").read_text())
ROUTED, REFUSED = DATA["routed"], DATA["refused"]

TASK_WORDS = {"segment", "segmentation", "segmented", "mask", "masks", "detect", "detection", "box", "boxes",
              "bounding", "rectangle", "depth", "distance", "far", "highlight", "locate", "localize", "localise",
              "find", "where", "show", "display", "paint", "colour", "color", "draw", "estimate", "map", "outline",
              "mark", "spot", "identify", "please", "image", "picture", "photo"}
SENTENCE_WORDS = {"if", "otherwise", "else", "unless", "it", "there", "is", "are", "not", "yes", "no"}


def words(text):
    return set(re.findall(r"[a-z]+", (text or "").lower()))


def routed(row):
    """What the router gives, as (task, category, colours): the shape the test set stores."""
    found = route(row["instruction"])
    colours = [found.color_if_present, found.color_if_absent] if found.task == "classification" else None
    return found.task, found.category, colours


def test_the_set_is_large_and_shares_no_template_with_the_training_pool():
    assert len(ROUTED) >= 150
    for task in ("segmentation", "detection", "depth", "classification", None):
        assert sum(row["task"] == task for row in ROUTED) >= 10, task
    pool = load_pool()

    def shape(text):
        return " ".join(re.findall(r"[a-z{}]+", text.lower()))

    templates = {shape(t) for task in pool if task != "_about" for t in [TEMPLATES[task], *pool[task]]}
    for row in ROUTED:
        text = row["instruction"]
        if row["category"]:
            text = re.sub(rf"\b(?:an?\s+)?{re.escape(row['category'])}", "{category}", text, flags=re.IGNORECASE)
        for name, colour in zip(("{color1}", "{color2}"), row["colours"] or ()):
            text = re.sub(rf"\b{colour}\b", name, text, flags=re.IGNORECASE)
        variants = {shape(text), shape(text.replace("{category}", "a {category}")),
                    shape(text.replace("{category}", "the {category}"))}
        assert not variants & templates, f"{row['instruction']!r} has the shape of a training template"


def test_routing_accuracy_is_at_least_95_percent(capsys):
    per_split = {}
    wrong = []
    for row in ROUTED:
        want = (row["task"], row["category"], row["colours"])
        try:
            got = routed(row)
        except InstructionError as error:
            got = ("error", str(error), None)
        hits, total = per_split.get(row["split"], (0, 0))
        per_split[row["split"]] = (hits + (got == want), total + 1)
        if got != want:
            wrong.append((row["instruction"], want, got))
    hits = sum(h for h, _ in per_split.values())
    with capsys.disabled():
        splits = ", ".join(f"{name} {h}/{n}" for name, (h, n) in per_split.items())
        print(f"\nrouting accuracy: {hits}/{len(ROUTED)} = {hits / len(ROUTED):.1%} ({splits})")
    assert hits / len(ROUTED) >= 0.95, wrong


@pytest.mark.parametrize("row", ROUTED, ids=lambda row: row["instruction"][:40])
def test_no_category_carries_words_used_for_something_else(row):
    try:
        _, category, colours = routed(row)
    except InstructionError:
        return  # counted by the accuracy test
    expected = words(row["category"])
    leftover = words(category) - expected
    assert not leftover & (TASK_WORDS | SENTENCE_WORDS | set(COLORS)), (category, leftover)
    for colour in colours or ():
        assert colour not in words(category) or colour in expected, (category, colours)


@pytest.mark.parametrize("row", REFUSED, ids=lambda row: row["instruction"][:40])
def test_refused_with_the_reason(row):
    with pytest.raises(InstructionError) as info:
        route(row["instruction"])
    message = str(info.value)
    assert "\n" not in message
    if row["reason"] == "language":
        assert "English" in message and "--task" in message
    elif row["reason"] == "no task":
        assert "no task fits" in message
    else:
        assert "does not say what" in message


@pytest.mark.parametrize("row", [r for r in REFUSED if r["reason"] == "language"][:4],
                         ids=lambda row: row["instruction"][:20])
def test_a_forced_task_works_in_any_language(row):
    assert route(row["instruction"], task="segmentation") == Route("segmentation", None, decided_by="forced")


# A grid of shapes people use, with compound categories that carry colours: no leftover words, ever.
SHAPES = ["Paint it {c1} if there is {cat}, and {c2} if not", "{c1} if you can see {cat}, {c2} otherwise",
          "Could you please show {c1} if the picture contains {cat}, else {c2}?",
          "Is there {cat}? If so, paint it {c1}; if not, paint it {c2}."]
CATEGORIES = ["a red car", "the small green cube", "all traffic lights", "a man in a white shirt", "two black dogs"]


@pytest.mark.parametrize("template", SHAPES)
@pytest.mark.parametrize("c1,c2", [("red", "green"), ("white", "black")])
def test_colours_are_never_part_of_a_category(template, c1, c2):
    for cat in CATEGORIES:
        found = route(template.format(c1=c1, c2=c2, cat=cat))
        expected = re.sub(r"^(?:a|the|all)\s+", "", cat)
        assert (found.task, found.category, found.color_if_present, found.color_if_absent) == (
            "classification", expected, c1, c2)

"""Instructions for the training pairs: fixed templates (the paper's FP data) and a paraphrase pool (RP data).

A template is a string with placeholders: `{category}` (segmentation, detection, classification) and
`{color1}` / `{color2}` (classification: the colour to paint when the category is present / absent, names
from icv_deploy.tasks.encodings.COLORS). The pool ships as training/prompts/paraphrases.json, written by
this project; `icv-data paraphrase` (training/paraphrase.py) regenerates or extends it with a T5 paraphraser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS, TASKS

POOL_FILE = Path(__file__).with_name("prompts") / "paraphrases.json"
# Instructions never used in training, for evaluation only: the paper's Table 3 unseen prompts and the like
# (unseen.json), and instructions written blind by someone who never saw the training pool or the phrasing
# grammar (blind.json, 2026-12-02; unseen.json had been read while the grammar was written).
UNSEEN_FILE = Path(__file__).with_name("prompts") / "unseen.json"
BLIND_FILE = Path(__file__).with_name("prompts") / "blind.json"
POOL_FILES = {"rephrased": POOL_FILE, "unseen": UNSEEN_FILE, "blind": BLIND_FILE}
EVALUATION_ONLY = ("unseen", "blind")
PROMPT_MODES = ("fixed", *POOL_FILES)

TEMPLATES = {
    "segmentation": "Segment the {category}.",
    "detection": "Detect the {category}.",
    "depth": "Create a monocular depth map.",
    "classification": "Show {color1} if the picture has {category}, otherwise show {color2}.",
}

# The placeholders each task's templates must contain (and no others).
PLACEHOLDERS = {
    "segmentation": {"category"},
    "detection": {"category"},
    "depth": set(),
    "classification": {"category", "color1", "color2"},
}



def _distinct_colors() -> tuple[str, ...]:
    """Every COLORS name, without later aliases of the same RGB ("grey" after "gray")."""
    seen, names = set(), []
    for name, rgb in COLORS.items():
        if rgb not in seen:
            seen.add(rgb)
            names.append(name)
    return tuple(names)


# Colours a classification prompt may name.
CLASSIFICATION_COLORS = _distinct_colors()


def placeholders(template: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", template))


def check_template(task: str, template: str, where: str = "template") -> None:
    if task not in TASKS:
        raise IcvError(f"{where}: unknown task {task!r}")
    found = placeholders(template)
    if found != PLACEHOLDERS[task]:
        want = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS[task])) or "no placeholders"
        raise IcvError(f"{where}: {task} prompt {template!r} must contain {want}")


def load_pool(path: str | Path | None = None) -> dict[str, list[str]]:
    """The paraphrase pool: task -> templates. Every task must have at least one; keys starting with '_' are notes."""
    path = Path(path) if path else POOL_FILE
    if not path.is_file():
        raise IcvError(f"missing prompt pool file: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IcvError(f"corrupt prompt pool file: {path} ({exc})") from None
    pool = {}
    for task in TASKS:
        templates = raw.get(task) if isinstance(raw, dict) else None
        if not templates or not all(isinstance(t, str) for t in templates):
            raise IcvError(f"prompt pool file {path} has no list of {task} prompts")
        for template in templates:
            check_template(task, template, where=str(path))
        pool[task] = list(templates)
    return pool


def fill(template: str, category: str | None = None, color1: str | None = None, color2: str | None = None) -> str:
    """Put the category and colours into a template ("a {category}" becomes "an ..." before a vowel)."""
    if category is not None and re.match(r"[aeiouAEIOU]", category):
        template = re.sub(r"\b([Aa]) \{category\}", r"\1n {category}", template)
    return template.format(category=category, color1=color1, color2=color2)


def category_word_tokens(tokenizer, categories, option: str) -> dict[str, int]:
    """The one CLIP token id of each category word ({category: id}, in the categories' order), for the training
    options (`option`, named in the error) that find the category in an instruction by its token."""
    ids = {c: tokenizer(c).input_ids[1:-1] for c in categories}
    if any(len(i) != 1 for i in ids.values()):
        raise IcvError(f"{option} needs one-token category words; got {ids}")
    return {c: i[0] for c, i in ids.items()}


def choose_colors(rng: np.random.Generator) -> tuple[str, str]:
    """Two different colours for a classification prompt, drawn at random (as the paper does)."""
    first, second = rng.choice(len(CLASSIFICATION_COLORS), size=2, replace=False)
    return CLASSIFICATION_COLORS[first], CLASSIFICATION_COLORS[second]


def choose_prompt(task: str, category: str | None, rng: np.random.Generator, mode: str = "fixed",
                  pool: dict[str, list[str]] | None = None,
                  colors: tuple[str, str] | None = None) -> tuple[str, str | None, str | None]:
    """(instruction, color1, color2) for one example; the colours are None except for classification, where they
    are `colors` if given, else drawn.

    mode "fixed": the task's template; "rephrased": a template drawn from the pool (loaded if not given);
    "unseen" / "blind": one drawn from an evaluation-only pool of instructions never used in training.
    """
    if mode == "fixed":
        template = TEMPLATES[task]
    elif mode in POOL_FILES:
        templates = (pool or load_pool(POOL_FILES[mode]))[task]
        template = templates[int(rng.integers(len(templates)))]
    else:
        raise IcvError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, not {mode!r}")
    color1 = color2 = None
    if task == "classification":
        color1, color2 = colors or choose_colors(rng)
    return fill(template, category, color1, color2), color1, color2

"""Instructions drawn from a hand-written phrasing grammar while training (icv-train's `rephrase` section).

A text encoder trained from scratch learns the phrasings it is shown, word order included: trained on the 20 per
task of paraphrases.json, the demo answered instructions phrased otherwise as if they were noise, even those made only
of words it knew (benchmarks/results/unknown-words-2026-12-02/). The grammar (training/prompts/grammar.json) writes
half a million to tens of millions of instructions per task from 15-18 frames and their slots:

    "<ask> <seg_verb> <det> {category}<in_pic>?"  ->  "Could you please isolate every {category} in this photo?"

Its vocabulary is the one the runtime's router understands (icv_deploy/tasks/routing.py), and every instruction it
draws routes to its own task, category and colours (tests/test_phrasing_grammar.py), so the model is never taught a
request the runtime would read differently. Instructions close to an evaluation-only one (unseen.json, blind.json) are
never drawn (`too_close_to_evaluation_only`), so `icv-eval --prompts unseen|blind` still measures phrasings the model
never saw.

With `rephrase: {share: p}` in an icv-train config, each example's instruction is replaced, with probability p (drawn
per epoch and example), by one drawn from the grammar for its task, with its category and classification colours kept
(the colours' roles too), so its target stays right. Cached latents only, like the other instruction-side options.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from icv_deploy.errors import IcvError

from .prompts import EVALUATION_ONLY, PLACEHOLDERS, POOL_FILES, fill, load_pool

GRAMMAR_FILE = Path(__file__).with_name("prompts") / "grammar.json"
# Word-sequence similarity (difflib's ratio, placeholders as words) above which a drawn instruction counts as a
# copy of an evaluation-only one and is drawn again: rewording one word of a 10-word sentence scores 0.9.
EVALUATION_SIMILARITY_LIMIT = 0.7
_SLOT = re.compile(r"<(\w+)>")


def _words(template: str) -> list[str]:
    return re.findall(r"\{\w+\}|[a-z0-9']+", template.lower())


@dataclass(frozen=True)
class Rephrase:
    share: float = 0.0  # of the examples whose instruction is drawn from the grammar instead; 0 turns it off
    grammar: str | None = None  # a grammar file; None: the shipped training/prompts/grammar.json

    def check(self) -> Rephrase:
        if not 0 <= self.share <= 1:
            raise IcvError(f"rephrase share must lie in [0, 1], got {self.share}")
        if self.grammar is not None and not Path(self.grammar).is_file():
            raise IcvError(f"rephrase grammar file not found: {self.grammar}")
        return self


class PhrasingGrammar:
    """Frames and slots per task (the file's format is in its `_about`); `draw` makes one template."""

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path else GRAMMAR_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IcvError(f"cannot read phrasing grammar {path}: {exc}") from None
        self.slots: dict[str, list[str]] = raw.get("slots", {})
        self.frames: dict[str, list[str]] = {task: raw.get(task) or [] for task in PLACEHOLDERS}
        for task, frames in self.frames.items():
            if not frames:
                raise IcvError(f"phrasing grammar {path} has no {task} frames")
            for frame in frames:
                self._check(frame, path, task, depth=0)
        self.evaluation_only = {task: [] for task in PLACEHOLDERS}  # every evaluation-only instruction, as words
        for mode in EVALUATION_ONLY:
            for task, templates in load_pool(POOL_FILES[mode]).items():
                self.evaluation_only[task] += [_words(t) for t in templates]

    def _check(self, text: str, path: Path, task: str, depth: int) -> None:
        if depth > 8:
            raise IcvError(f"phrasing grammar {path}: slots nest too deep in {text!r}")
        for name in _SLOT.findall(text):
            if not self.slots.get(name):
                raise IcvError(f"phrasing grammar {path}: {task} uses slot <{name}>, which has no alternatives")
            for alternative in self.slots[name]:
                self._check(alternative, path, task, depth + 1)

    def _expand_once(self, text: str, rng: np.random.Generator) -> str:
        return _SLOT.sub(lambda m: self.slots[m.group(1)][int(rng.integers(len(self.slots[m.group(1)])))], text)

    def draw(self, task: str, rng: np.random.Generator) -> str:
        """A template for `task`: a frame drawn uniformly, each slot's alternative uniformly (not uniform over the
        sentences, which would favour the frames with the most slots); never one too close to an unseen one."""
        for _ in range(100):
            text = self.frames[task][int(rng.integers(len(self.frames[task])))]
            while _SLOT.search(text):
                text = self._expand_once(text, rng)
            text = " ".join(text.split())
            text = text[0].upper() + text[1:]
            if not self.too_close_to_evaluation_only(task, text):
                return text
        raise IcvError(f"the phrasing grammar draws only instructions too close to evaluation-only ones for {task}")

    def too_close_to_evaluation_only(self, task: str, template: str) -> bool:
        words = _words(template)
        return any(difflib.SequenceMatcher(None, words, other).ratio() > EVALUATION_SIMILARITY_LIMIT
                   for other in self.evaluation_only[task])

    def count(self, task: str) -> int:
        """How many distinct expansions `task`'s frames have at most (alternatives multiplied out)."""
        def expansions(text: str) -> int:
            total = 1
            for name in _SLOT.findall(text):
                total *= sum(expansions(alternative) for alternative in self.slots[name])
            return total
        return sum(expansions(frame) for frame in self.frames[task])


class GrammarRephrasing:
    """Re-draws examples' instructions from the grammar (see the module's docstring). `rows` must hold the columns
    edit_prompt, task and category; the classification colours are those the runtime's router reads from each
    instruction (`color_names`: training/latent_cache.py's classification_color_names, computed if not given), as
    the decoded colour term reads them."""

    def __init__(self, settings: Rephrase, rows, tokenizer, color_names=None):
        from .latent_cache import classification_color_names
        from .train_data import tokenize

        missing = {"edit_prompt", "task", "category"} - set(getattr(rows, "column_names", rows))
        if missing:
            raise IcvError(f"rephrase needs the data's columns {sorted(missing)} (an icv-data build of synth scenes)")
        self.settings, self.tokenizer, self.tokenize = settings, tokenizer, tokenize
        self.grammar = PhrasingGrammar(settings.grammar)
        names = color_names if color_names is not None else classification_color_names(rows)
        # per row: (task, category, colour if present, colour if absent)
        self.examples = [(task, category, *(pair or (None, None)))
                         for task, category, pair in zip(rows["task"], rows["category"], names)]

    def apply(self, input_ids: torch.Tensor, index: int, rng: np.random.Generator) -> torch.Tensor:
        """The instruction's tokens, or with probability `share` those of one drawn from the grammar."""
        if rng.random() >= self.settings.share:
            return input_ids
        task, category, color1, color2 = self.examples[index]
        text = fill(self.grammar.draw(task, rng), category, color1, color2)
        return self.tokenize(self.tokenizer, [text])[0].to(input_ids.dtype)

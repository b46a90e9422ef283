"""Instructions with words the training pool never had, made while training from cached latents.

A text encoder trained from scratch knows only the tokens of its training instructions: the demo's pool of
paraphrases holds 135 of CLIP's 49,408. Any other word a user writes ("Highlight the parts corresponding to the
cube") reaches it as an embedding still at its random initialisation. With an `unknown_tokens` section in an
icv-train config, a share of the examples (drawn per epoch and example) get 1 to `max_tokens` tokens inserted at
random places between the start and end tokens, each drawn from the vocabulary less every token of the training
instructions and the special ones, so the model learns to answer from the words it knows:

    "Mark all pixels that belong to the cube." -> "Mark all pixels jubilee that belong to the cube."   same target

Insertion, not replacement: the task and category words always survive, so the target stays right.
Measured on the demo (benchmarks/results/unknown-words-2026-12-02/): 300 fine-tuning steps with a share of 0.3
changed no figure under unseen phrasings, which fail with known words too (word order, context): a larger pool of
phrasings is the lever there; this is a guard against stray words, not a substitute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UnknownTokens:
    share: float = 0.0  # of the examples whose instruction gets unknown tokens inserted; 0 turns it off
    max_tokens: int = 3  # 1 to max_tokens of them, at independent random places

    def check(self) -> UnknownTokens:
        from icv_deploy.errors import IcvError

        if not 0 <= self.share <= 1:
            raise IcvError(f"unknown_tokens share must lie in [0, 1], got {self.share}")
        if self.max_tokens < 1:
            raise IcvError(f"unknown_tokens max_tokens must be at least 1, got {self.max_tokens}")
        return self


class UnknownTokenInsertion:
    """Inserts unknown tokens into tokenised instructions (see the module's docstring)."""

    def __init__(self, settings: UnknownTokens, known_ids: torch.Tensor, tokenizer):
        self.settings = settings
        self.end, self.length = tokenizer.eos_token_id, tokenizer.model_max_length
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end
        unknown = torch.ones(len(tokenizer), dtype=torch.bool)
        unknown[known_ids.flatten().unique()] = False
        special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        unknown[[t for t in special if t is not None]] = False
        self.candidates = unknown.nonzero().flatten()

    def apply(self, input_ids: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The instruction's tokens (padded to model_max_length), or with probability `share` a copy with unknown
        tokens inserted (as many as fit before the end token)."""
        if rng.random() >= self.settings.share:
            return input_ids
        ids = input_ids.tolist()
        used = ids.index(self.end) + 1 if self.end in ids else len(ids)  # start, words, end
        count = min(int(rng.integers(1, self.settings.max_tokens + 1)), self.length - used)
        words = ids[1:used - 1]
        for _ in range(count):
            place = int(rng.integers(0, len(words) + 1))
            words.insert(place, int(self.candidates[int(rng.integers(len(self.candidates)))]))
        tokens = [ids[0], *words, self.end]
        return torch.tensor(tokens + [self.pad] * (self.length - len(tokens)), dtype=input_ids.dtype)

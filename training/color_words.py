"""Teaching the text encoder the colour words: a training-only colour head on its outputs (issue 12).

A classification instruction names the two colours to paint ("Show blue if the picture has a cube, otherwise show
black"), drawn at random from 13. The demo of 2026-12-02 night painted a third colour for 42 of its 60 held-out
yes/no answers (benchmarks/answer_anatomy.py), and a wrong one even when both named colours were the same. Its text
encoder, trained from scratch, put the colour words as close as random weights put any two words (relative
difference of its outputs at the word 0.37-0.40, some pairs 0.10; the category words, which the word term of
training/scene_recognition.py asks it to tell apart, 0.94-1.09): nothing but the v-loss of one example in four,
whose target colour is uncertain as long as the presence decision is, asked for the difference.

This term asks for it directly. A linear head reads the text encoder's output at the last token of every palette
colour word in the batch's instructions (whatever the task) and names the colour, a cross-entropy over the
palette's distinct colours (icv_deploy.tasks.encodings.COLORS; "grey" is "gray"):

    term = CE(head(e at the colour word), the word's colour)        averaged over the colour words of the batch

Its gradient reaches the text encoder only, whose outputs are what the UNet's cross-attention reads. The head is
not part of the model: the saved text encoder is the plain transformers one.

Measured and not in the recipe (benchmarks/results/color-words-2026-12-03/): in the answers and phrasings stages it
moved the colour words 1.47 apart, and the yes/no answers not at all (two of 60 either way), while unseen-phrasing
masks lost half their mIoU. The colours had been read all along: the demo's first sampling step paints a mixture of
exactly the two named colours, undecided between them, which decodes to a third colour. The limit is the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icv_deploy.errors import IcvError


@dataclass(frozen=True)
class ColorWords:
    weight: float = 0.0  # of the term; 0 turns it off


def color_word_tokens(tokenizer) -> list[tuple[tuple[int, ...], int]]:
    """(the CLIP tokens of a colour name, its colour's index in CLASSIFICATION_COLORS) for every name in COLORS:
    aliases ("grey") share their colour's index, and "cyan" is two tokens."""
    from icv_deploy.tasks.encodings import COLORS

    from .prompts import CLASSIFICATION_COLORS

    index = {COLORS[name]: i for i, name in enumerate(CLASSIFICATION_COLORS)}
    return [(tuple(tokenizer(name).input_ids[1:-1]), index[rgb]) for name, rgb in COLORS.items()]


class ColorWordHead(torch.nn.Module):
    """The linear map from the text encoder's output at a colour word to the palette's colours."""

    def __init__(self, words: list[tuple[tuple[int, ...], int]], text_width: int, weight: float = 1.0):
        super().__init__()
        if not words or any(not tokens for tokens, _ in words):
            raise IcvError("color_words needs every colour name's tokens")
        self.words, self.weight = words, weight
        self.classify = torch.nn.Linear(text_width, 1 + max(i for _, i in words))

    def find(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, positions, colours) of every colour word in `ids` (batch, tokens), at the word's last token. A name
        matches only as its whole token sequence, so "cyan"'s second token ("an") alone is not a colour."""
        rows, positions, colors = [], [], []
        length = ids.shape[1]
        for tokens, color in self.words:
            span = len(tokens)
            if span > length:
                continue
            match = torch.ones(ids.shape[0], length - span + 1, dtype=torch.bool, device=ids.device)
            for k, token in enumerate(tokens):
                match &= ids[:, k:length - span + 1 + k] == token
            row, start = match.nonzero(as_tuple=True)
            rows.append(row)
            positions.append(start + span - 1)
            colors.append(torch.full_like(row, color))
        return torch.cat(rows), torch.cat(positions), torch.cat(colors)

    def forward(self, ids: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor | float, dict[str, float]]:
        """(weighted term, {"color_words": its value}) over the colour words of `ids` (batch, tokens), read from
        `text` (batch, tokens, width), the text encoder's output for them; (0, {}) when no instruction names one."""
        rows, positions, colors = self.find(ids)
        if not len(rows):
            return 0.0, {}
        term = F.cross_entropy(self.classify(text[rows, positions].float()), colors)
        return self.weight * term, {"color_words": term.item()}

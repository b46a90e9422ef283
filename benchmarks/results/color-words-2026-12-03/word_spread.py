"""How far apart a model's text encoder puts the colour words and the category words (2026-12-03).

    python benchmarks/results/color-words-2026-12-03/word_spread.py MODEL_FOLDER

For each word of a set, the text encoder's output at the word's last token in one fixed sentence; printed: the mean
and the smallest relative difference |a - b| / mean(|a|, |b|) over the pairs of words.
"""

import sys

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from icv_deploy.training.prompts import CLASSIFICATION_COLORS

folder = sys.argv[1] if len(sys.argv) > 1 else "icv_deploy/assets/demo"
encoder = CLIPTextModel.from_pretrained(folder + "/text_encoder").float().eval()
tokenizer = CLIPTokenizer.from_pretrained(folder + "/tokenizer")


def outputs(words, sentence):
    before = len(tokenizer(sentence.split("{w}")[0].strip()).input_ids) - 1  # <start> and the words before
    rows = []
    for word in words:
        ids = tokenizer(sentence.format(w=word), padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            rows.append(encoder(ids)[0][0, before + len(tokenizer(word).input_ids) - 3])
    return torch.stack(rows)


def spread(rows):
    pairs = [((rows[i] - rows[j]).norm() / ((rows[i].norm() + rows[j].norm()) / 2)).item()
             for i in range(len(rows)) for j in range(i + 1, len(rows))]
    return f"mean {np.mean(pairs):.2f}, smallest {np.min(pairs):.2f}"


categories = ["ball", "cube", "cylinder", "cone", "pyramid"]
print("colour if present:", spread(outputs(CLASSIFICATION_COLORS, "Show {w} if the picture has a cube, otherwise show black.")))
print("colour if absent: ", spread(outputs(CLASSIFICATION_COLORS, "Show red if the picture has a cube, otherwise show {w}.")))
print("category:         ", spread(outputs(categories, "Show red if the picture has a {w}, otherwise show black.")))

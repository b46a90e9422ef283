"""How far apart the text encoder puts the category words, against the task words (session 10).

    python text_embedding_spread.py MODEL [MODEL ...]

For "Segment the <category>" over the 5 synth categories: the relative difference between two categories' vectors
at the category word's position (|a - b| over their mean norm), and over the whole 77-token sequence the mean distance
between categories against the distance between "Segment the X" and "Detect the X". The last row is the same text
encoder architecture at random initialisation (seed 0).
"""

import itertools
import sys

import torch
from transformers import CLIPTextModel, CLIPTokenizer

CATEGORIES = ["ball", "cube", "cylinder", "cone", "pyramid"]
WORD = 3  # <start> segment the <category>


def spread(tokenizer, encoder):
    def embed(prompt):
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder.eval()(ids)[0][0]

    seg = {c: embed(f"Segment the {c}") for c in CATEGORIES}
    det = {c: embed(f"Detect the {c}") for c in CATEGORIES}
    pairs = list(itertools.combinations(CATEGORIES, 2))
    word = [float((seg[a][WORD] - seg[b][WORD]).norm() / ((seg[a][WORD].norm() + seg[b][WORD].norm()) / 2))
            for a, b in pairs]
    categories = [float((seg[a] - seg[b]).norm()) for a, b in pairs]
    tasks = [float((seg[c] - det[c]).norm()) for c in CATEGORIES]
    return sum(word) / len(word), sum(categories) / len(categories), sum(tasks) / len(tasks)


print("| text encoder | category word, relative difference | sequence: between categories | sequence: segment vs detect |")
print("| --- | ---: | ---: | ---: |")
for model in sys.argv[1:]:
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    row = spread(tokenizer, encoder)
    print(f"| {model} | {row[0]:.3f} | {row[1]:.1f} | {row[2]:.1f} |")
torch.manual_seed(0)
row = spread(tokenizer, CLIPTextModel(encoder.config))  # the last model's architecture and tokenizer
print(f"| random initialisation | {row[0]:.3f} | {row[1]:.1f} | {row[2]:.1f} |")

"""hey-blind-sentence.png: the first three held-out queries of the blind sentence that the fresh-scenes run answers
with a yes/no card; rows: the picture, the shipped demo-1step's answer, the fresh-scenes model's (runs/s24/more-scenes
on the session-24 machine), and the unknown-token run's (runs/s24/unk).
    python benchmarks/results/more-scenes-2026-12-03/hey_picture.py"""
import numpy as np
from PIL import Image

import icv_deploy
from icv_deploy.tasks.visualize import labelled_grid
from icv_deploy.training.eval_queries import collect_queries

MODELS = {"shipped demo-1step": "demo-1step", "after fresh scenes": "runs/s24/more-scenes/model",
          "then unknown tokens": "runs/s24/unk/model"}
queries = [q for q in collect_queries(["synth:runs/demo/heldout"], ["segmentation"], 40, "blind", 0)
           if q.instruction.startswith("Hey")][:3]
examples = [q.load() for q in queries]
rows = [[np.asarray(e.image) for e in examples]]
for source in MODELS.values():
    pipe = icv_deploy.load(source)
    pipe.progress = False
    rows.append([np.asarray(pipe(e.image, q.instruction, task="segmentation").visual) for q, e in zip(queries, examples)])
page = labelled_grid(rows, [q.category for q in queries], ["picture", *MODELS],
                     row_captions=["Hey, can you highlight the area the C takes up, pixel by pixel? (blind.json)"] + [""] * 3)
Image.fromarray(page).save("benchmarks/results/more-scenes-2026-12-03/hey-blind-sentence.png")

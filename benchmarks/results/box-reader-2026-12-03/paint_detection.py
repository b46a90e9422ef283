"""Scratch (box-reader-2026-12-03): save a model's painted detection answers with their ground truth, so that box
readers can be compared offline on the same pictures.

    python benchmarks/results/box-reader-2026-12-03/paint_detection.py MODEL synth:ROOT LIMIT PROMPTS OUT.npz
"""
import sys

import numpy as np

import icv_deploy
from icv_deploy.training.eval_queries import collect_queries

model, source, limit, prompts, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
queries = collect_queries([source], ["detection"], limit, prompts, 0)  # icv-eval's queries, seed 0
pipe = icv_deploy.load(model)
pipe.progress = False
visuals, gts = [], []
for q in queries:
    example = q.load()
    visuals.append(np.asarray(pipe(example.image, q.instruction, task="detection").visual))
    gts.append(np.asarray(example.boxes, dtype=np.float64).reshape(-1, 4))
np.savez_compressed(out, visuals=np.stack(visuals), gts=np.array(gts, dtype=object),
                    ids=np.array([q.image_id for q in queries]), cats=np.array([q.category for q in queries]),
                    line_fraction=pipe.box_line_fraction)
print(len(queries), "queries ->", out)

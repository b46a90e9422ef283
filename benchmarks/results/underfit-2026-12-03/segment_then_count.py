"""Is presence in the model's masks? For each yes/no query, ask the same model to segment the query's category and
call it present when the mask has at least N pixels: the accuracy of that rule, and the ROC AUC of the mask area.

    python segment_then_count.py MODEL synth:SCENES [LIMIT]
"""
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

import icv_deploy
from icv_deploy.training.eval_queries import collect_queries

model, data = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 100
pipe = icv_deploy.load(model)
pipe.progress = False
truth, area = [], []
for query in collect_queries([data], ["classification"], limit, "fixed", 0):
    example = query.load()
    res = pipe(example.image, f"Segment the {query.category}.", task="segmentation", seed=0)
    truth.append(bool(example.present))
    area.append(int(np.asarray(res.mask).sum()))
truth, area = np.array(truth), np.array(area)
print(f"{model} on {data}: {len(truth)} queries, {truth.mean():.2f} present; mask-area ROC AUC "
      f"{roc_auc_score(truth, area):.3f}")
for pixels in (1, 20, 50, 100, 200):
    print(f"  present when the mask has >= {pixels:3d} pixels: accuracy {((area >= pixels) == truth).mean():.3f}")

"""ceval.py MODEL synth:SCENES [LIMIT]: the evaluator's yes/no queries as "Show blue if the picture has a C,
otherwise show black.": accuracy (median-colour decoder), ROC AUC of its score, and ROC AUC of the share of
pixels nearer blue than black (what a mask-shaped answer carries)."""
import sys
import numpy as np
from sklearn.metrics import roc_auc_score
import icv_deploy
from icv_deploy.training.eval_queries import collect_queries
model, data = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200
pipe = icv_deploy.load(model); pipe.progress = False
truth, said, score, share = [], [], [], []
for q in collect_queries([data], ["classification"], limit, "fixed", 0):
    ex = q.load()
    res = pipe(ex.image, f"Show blue if the picture has a {q.category}, otherwise show black.", task="classification", seed=0)
    v = res.visual.astype(np.float64)
    nearer_blue = np.linalg.norm(v - (0, 0, 255), axis=-1) < np.linalg.norm(v, axis=-1)
    truth.append(bool(ex.present)); said.append(bool(res.present)); score.append(float(res.score)); share.append(nearer_blue.mean())
truth, said, score, share = map(np.array, (truth, said, score, share))
print(f"{model} on {data}: {len(truth)} queries, {truth.mean():.2f} present; accuracy {(said == truth).mean():.3f}, "
      f"score AUC {roc_auc_score(truth, score):.3f}, blue-share AUC {roc_auc_score(truth, share):.3f}, said yes {said.mean():.2f}",
      flush=True)

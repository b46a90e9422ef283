"""share.py MODEL [LIMIT] [PROMPTS]: held-out yes/no queries in the evaluator's phrasings: accuracy, score AUC, and
ROC AUC of the share of pixels nearer the "present" colour (what a grown-mask answer carries). With BB=1 in the
environment, each instruction's two colour words are replaced by blue and black (the phrasing kept)."""
import os
import sys
import numpy as np
from sklearn.metrics import roc_auc_score
import icv_deploy
from icv_deploy.tasks.encodings import COLORS
from icv_deploy.training.eval_queries import collect_queries
model = sys.argv[1]; limit = int(sys.argv[2]) if len(sys.argv) > 2 else 200
prompts = sys.argv[3] if len(sys.argv) > 3 else "rephrased"
BB = bool(os.environ.get("BB"))
pipe = icv_deploy.load(model); pipe.progress = False
truth, said, score, share = [], [], [], []
for q in collect_queries(["synth:runs/demo/heldout"], ["classification"], limit, prompts, 0):
    ex = q.load()
    instr = q.instruction
    if BB:
        instr = instr.replace(q.colors[0], "@1").replace(q.colors[1], "@2").replace("@1", "blue").replace("@2", "black")
    yes_no = ("blue", "black") if BB else q.colors
    res = pipe(ex.image, instr, task="classification", seed=0)
    v = res.visual.astype(np.float64)
    yes, no = (np.array(COLORS[c], np.float64) for c in yes_no)
    nearer = np.linalg.norm(v - yes, axis=-1) < np.linalg.norm(v - no, axis=-1)
    truth.append(bool(ex.present)); said.append(bool(res.present)); score.append(float(res.score)); share.append(nearer.mean())
truth, said, score, share = map(np.array, (truth, said, score, share))
print(f"{model} {prompts}: {len(truth)} queries; accuracy {(said == truth).mean():.3f}, score AUC "
      f"{roc_auc_score(truth, score):.3f}, share AUC {roc_auc_score(truth, share):.3f}, said yes {said.mean():.2f}, "
      f"mean share present {share[truth].mean():.3f} absent {share[~truth].mean():.3f}", flush=True)

"""bbeval.py MODEL synth:SCENES [LIMIT]: accuracy and ROC AUC of "Show blue if the picture has a C, otherwise show
black." on the evaluator's yes/no queries (category and truth from the evaluator; the instruction fixed to blue/black)."""
import sys
import numpy as np
from sklearn.metrics import roc_auc_score
import icv_deploy
from icv_deploy.training.eval_queries import collect_queries
model, data = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200
pipe = icv_deploy.load(model); pipe.progress = False
truth, said, score = [], [], []
for q in collect_queries([data], ["classification"], limit, "fixed", 0):
    ex = q.load()
    res = pipe(ex.image, f"Show blue if the picture has a {q.category}, otherwise show black.", task="classification", seed=0)
    truth.append(bool(ex.present)); said.append(bool(res.present)); score.append(float(res.score))
truth, said, score = map(np.array, (truth, said, score))
print(f"{model} on {data}: {len(truth)} queries, {truth.mean():.2f} present; accuracy {(said == truth).mean():.3f}, "
      f"score ROC AUC {roc_auc_score(truth, score):.3f}, said yes {said.mean():.2f}")

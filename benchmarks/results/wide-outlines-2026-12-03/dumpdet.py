"""dumpdet.py MODEL OUT.npz [LIMIT] [PROMPTS]: the eval's held-out detection queries, painted visuals + gt boxes."""
import sys, numpy as np, icv_deploy
from icv_deploy.training.eval_queries import collect_queries
model, out = sys.argv[1], sys.argv[2]
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 150
prompts = sys.argv[4] if len(sys.argv) > 4 else "rephrased"
qs = collect_queries(["synth:runs/demo/heldout"], ["detection"], limit, prompts, 0)
pipe = icv_deploy.load(model); pipe.progress = False
vis, gts, cats = [], [], []
for q in qs:
    ex = q.load()
    r = pipe(ex.image, q.instruction, task="detection", seed=0)
    vis.append(r.visual); gts.append(np.asarray(ex.boxes, float).reshape(-1, 4)); cats.append(q.category)
np.savez_compressed(out, visuals=np.stack(vis), gts=np.array(gts, dtype=object), cats=np.array(cats))
print(len(qs), "queries")

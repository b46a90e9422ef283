import numpy as np, icv_deploy, sys
from icv_deploy.training.eval_queries import collect_queries
from icv_deploy import metrics
V = ["Hey, can you highlight the area the {c} takes up, pixel by pixel?",
     "Can you highlight the area the {c} takes up, pixel by pixel?",
     "Hey, can you highlight the area the {c} takes up?",
     "Can you highlight the area the {c} takes up?",
     "Hey, can you highlight the {c}?",
     "Can you highlight the {c}?",
     "Highlight the area the {c} takes up, pixel by pixel.",
     "Hey, highlight the {c}.",
     "Can you segment the {c}, pixel by pixel?",
     "Hey, can you segment the {c}?"]
qs = collect_queries(["synth:runs/demo/heldout"], ["segmentation"], 120, "fixed", 0)
exs = [q.load() for q in qs]
for m in sys.argv[1:]:
    p = icv_deploy.load(m); p.progress = False
    for v in V:
        counts = []
        for q, ex in zip(qs, exs):
            r = p(ex.image, v.format(c=q.category), task="segmentation")
            counts.append(metrics.segmentation_counts(np.asarray(r.mask, bool), np.asarray(ex.mask, bool)))
        i = sum(c[0] for c in counts); u = sum(c[1] for c in counts)
        print(f"{m[-20:]:20s} {i/u:.2f}  {v}", flush=True)

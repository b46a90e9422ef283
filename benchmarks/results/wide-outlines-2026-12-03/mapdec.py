"""mapdec.py DUMP.npz: mAP@0.5 of the current decode_detection on dumped visuals."""
import sys, numpy as np
from icv_deploy import metrics
from icv_deploy.tasks.decoders import decode_detection
F = float(sys.argv[2]) if len(sys.argv) > 2 else None
d = np.load(sys.argv[1], allow_pickle=True)
qs = []
for v, g, c in zip(d["visuals"], d["gts"], d["cats"]):
    b, s = decode_detection(v, line_fraction=F)
    qs.append({"category": c, "gt_boxes": g, "boxes": b, "scores": s})
m = metrics.detection(qs)
print(sys.argv[1], {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()})

import sys, numpy as np, cv2
import icv_deploy.tasks.decoders as D
from icv_deploy import metrics
F = 3/128
orig_init = D._Bands.__init__
def run(name, npz):
    d = np.load(npz, allow_pickle=True); qs = []
    for v, g, c in zip(d["visuals"], d["gts"], d["cats"]):
        b, s = D.decode_detection(v, line_fraction=F)
        qs.append({"category": c, "gt_boxes": g, "boxes": b, "scores": s})
    m = metrics.detection(qs); print(name, npz.split("/")[-1], round(m["map50"], 3), round(m["map"], 3), m["pred_boxes"])
def dilated_init(k):
    def init(self, mask, blueness, width):
        if width > 1:
            kern = np.ones((k, k), np.uint8)
            blueness = cv2.dilate(blueness.astype(np.float32) * mask, kern); mask = cv2.dilate(mask, kern)
        orig_init(self, mask, blueness, width)
    return init
for npz in sys.argv[1:]:
    D._Bands.__init__ = orig_init; run("as is", npz)
    for k in (2, 3):
        D._Bands.__init__ = dilated_init(k); run(f"bands on mask dilated {k}", npz)
    D._Bands.__init__ = orig_init
    for sat in (150, 100):
        D.BLUE_MIN_SATURATION = sat; run(f"saturation >= {sat}", npz)
        D._Bands.__init__ = dilated_init(3); run(f"saturation >= {sat} + dilated 3", npz); D._Bands.__init__ = orig_init
    D.BLUE_MIN_SATURATION = 200

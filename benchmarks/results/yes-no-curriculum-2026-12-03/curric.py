"""curric.py SRC OUT RADIUS: rewrite a classification-only dataset's "present" targets to the category's mask,
dilated by RADIUS pixels, in the first colour on the second ("flat" keeps the solid card). Absent targets stay
the solid second-colour card. Colours are read from each instruction by the router."""
import json
import sys
import cv2
import datasets
import numpy as np
from PIL import Image
from icv_deploy.tasks.encodings import COLORS
from icv_deploy.tasks.routing import route

src, out, radius = sys.argv[1], sys.argv[2], sys.argv[3]
ds = datasets.load_from_disk(src)
kernel = None if radius in ("0", "flat") else cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(radius) + 1,) * 2)


def rewrite(row):
    ann = json.load(open(f"/work/main/runs/demo/synth/annotations/{row['image_id']}.json"))
    ids = [o["id"] for o in ann["objects"] if o["category"] == row["category"]]
    if not ids or radius == "flat":
        return row
    r = route(row["edit_prompt"])
    c1, c2 = r.color_if_present, r.color_if_absent
    inst = np.array(Image.open(f"/work/main/runs/demo/synth/instances/{row['image_id']}.png"))
    mask = np.isin(inst, ids).astype(np.uint8)
    if kernel is not None:
        mask = cv2.dilate(mask, kernel)
    target = np.empty((*mask.shape, 3), np.uint8)
    target[:] = COLORS[c2]
    target[mask > 0] = COLORS[c1]
    row["edited_image"] = Image.fromarray(target)
    return row


ds.map(rewrite, num_proc=1).save_to_disk(out)
print(out, radius)

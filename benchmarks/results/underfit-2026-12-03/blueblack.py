"""Rewrite the classification-only dataset to one colour pair: blue if present, black if not (the paper's template)."""
import json
import datasets
import numpy as np
from PIL import Image
ds = datasets.load_from_disk("runs/s19/clsfix-data")
cards = {c: Image.fromarray(np.full((128, 128, 3), c, np.uint8)) for c in [(0, 0, 255), (0, 0, 0)]}
def rewrite(row):
    ann = json.load(open(f"runs/demo/synth/annotations/{row['image_id']}.json"))
    present = row["category"] in {o["category"] for o in ann["objects"]}
    row["edit_prompt"] = f"Show blue if the picture has a {row['category']}, otherwise show black."
    row["edited_image"] = cards[(0, 0, 255) if present else (0, 0, 0)]
    return row
out = ds.map(rewrite, num_proc=1)
out.save_to_disk("runs/s19/bb-data")
print(out, out[0]["edit_prompt"])

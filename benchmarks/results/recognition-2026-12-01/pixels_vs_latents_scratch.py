"""Scratch (session 12): does the autoencoder's 4-channel latent lose what tells the shapes apart? The recognition
probe's reference CNN (benchmarks/recognition_probe.py: presence of each category, BCE, AdamW 1e-3, batch 64), trained
from scratch on the recipe's 4,000 scenes, once on the demo VAE's latents (4 x 32 x 32) and once on the pictures
themselves folded to the same grid without loss (pixel_unshuffle by 4: 48 x 32 x 32), scored on the 300 held-out
scenes. usage (repo root): python benchmarks/results/recognition-2026-12-01/pixels_vs_latents_scratch.py 1500 (27 min here)"""
import json, sys, time

import torch
from diffusers import AutoencoderKL

sys.path.insert(0, "benchmarks")
from recognition_probe import image_latents, synth_scenes, train_reference  # noqa: E402

steps = int(sys.argv[1])
torch.manual_seed(0)
train_pictures, train_y, categories = synth_scenes("synth:runs/demo/synth", None)
test_pictures, test_y, _ = synth_scenes("synth:runs/demo/heldout", None)
vae = AutoencoderKL.from_pretrained("icv_deploy/assets/demo", subfolder="vae").eval()


def folded(pictures):
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.pixel_unshuffle(x, 4)


inputs = {"latents (4 x 32 x 32)": (image_latents(vae, train_pictures), image_latents(vae, test_pictures)),
          "pixels folded (48 x 32 x 32)": (folded(train_pictures), folded(test_pictures))}
results = {}
for name, (train_x, test_x) in inputs.items():
    start = time.time()
    curve = train_reference(train_x, train_y, test_x, test_y, steps, progress=False)
    results[name] = curve
    for point in curve:
        print(f"{name}: step {point['step']} train loss {point['train_loss']:.3f} "
              f"held-out accuracy {sum(point['accuracy']) / len(categories):.3f}", flush=True)
    print(f"{name}: {time.time() - start:.0f} s", flush=True)
json.dump({"categories": list(categories), "steps": steps, "curves": results}, open("benchmarks/results/recognition-2026-12-01/pixels_vs_latents.json", "w"))

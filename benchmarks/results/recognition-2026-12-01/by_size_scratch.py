"""Scratch: the 20k reference CNN's held-out errors by object size (the largest visible instance of the category)."""
import json, sys
import numpy as np, torch
sys.path.insert(0, "benchmarks")
import recognition_probe as rp
from diffusers import AutoencoderKL
torch.set_num_threads(2)
vae = AutoencoderKL.from_pretrained("icv_deploy/assets/demo/vae").float().eval()
Xtr, Ytr, cats = rp.synth_scenes("synth:runs/s8/synth20k", 20000)
Xte, Yte, _ = rp.synth_scenes("synth:runs/demo/heldout", 300)
Ltr, Lte = rp.image_latents(vae, Xtr), rp.image_latents(vae, Xte)
del Xtr
torch.manual_seed(0)
net = rp.reference_cnn(4, 5); opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0); Yt = torch.as_tensor(Ytr, dtype=torch.float32)
for step in range(2000):
    idx = torch.randint(0, len(Ltr), (64,), generator=g)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(Ltr[idx]), Yt[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 500 == 499: print(step + 1, loss.item(), flush=True)
with torch.no_grad(): pred = (net(Lte) > 0).numpy()
area = np.zeros((300, 5))
for i in range(300):
    for o in json.load(open(f"runs/demo/heldout/annotations/{i:06d}.json"))["objects"]:
        c = cats.index(o["category"]); area[i, c] = max(area[i, c], o["area"])
right = pred == Yte
print("overall", right.mean().round(3), "absent (false positives) acc", right[~Yte].mean().round(3), "n", (~Yte).sum())
for lo, hi in ((1, 128), (128, 256), (256, 512), (512, 1024), (1024, 1e9)):
    sel = Yte & (area >= lo) & (area < hi)
    print(f"present, largest instance {lo}-{hi} px: n {sel.sum()}, acc {right[sel].mean():.3f}")
errors = ~right
print("share of errors on absent categories", (errors & ~Yte).sum() / errors.sum(), "on present <256 px", (errors & Yte & (area < 256)).sum() / errors.sum())

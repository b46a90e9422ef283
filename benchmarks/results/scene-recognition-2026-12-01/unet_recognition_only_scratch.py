"""Scratch: can the demo UNet (architecture of demo.yaml) learn the per-cell categories from the recognition term
alone? From random init (arg 'scratch') or from the stage-6 weights ('stage6'); lr 1e-3, batch 32."""
import sys, time
import numpy as np, torch
sys.path.insert(0, "benchmarks")
import recognition_probe as rp
from diffusers import AutoencoderKL, UNet2DConditionModel
from icv_deploy.training.config import load_config
from icv_deploy.training.datasets.synth import SynthAdapter
from icv_deploy.training.scene_recognition import SceneRecognition, SceneRecognitionHead, scene_shares
torch.set_num_threads(2)
START, STEPS, LR = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
N = 4000
vae = AutoencoderKL.from_pretrained("icv_deploy/assets/demo/vae").float().eval()
if START == "stage6":
    unet = UNet2DConditionModel.from_pretrained("runs/s7/stage6/unet").float()
else:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**load_config("demo").architecture["unet"])
cats = ["ball", "cube", "cylinder", "cone", "pyramid"]
t0 = time.time()
Xtr, _, _ = rp.synth_scenes("synth:runs/demo/synth", N); Ltr = rp.image_latents(vae, Xtr); del Xtr
Xte, Yte, _ = rp.synth_scenes("synth:runs/demo/heldout", 300); Lte = rp.image_latents(vae, Xte)
Str = torch.from_numpy(np.stack([scene_shares(SynthAdapter("runs/demo/synth"), f"{i:06d}", 32) for i in range(N)]))
print("data", round(time.time() - t0), flush=True)
settings = SceneRecognition(weight=1.0, blocks=("mid_block", "up_blocks.2"), grid=32)
head = SceneRecognitionHead(settings, unet, 5)
opt = torch.optim.AdamW(list(unet.parameters()) + list(head.parameters()), lr=LR)
text = torch.zeros(1, 77, unet.config.cross_attention_dim)
g = torch.Generator().manual_seed(0)
def presence():
    unet.eval(); out = []
    with torch.no_grad():
        for i in range(0, 300, 50):
            x = Lte[i:i + 50]
            unet(torch.cat([torch.randn(x.shape, generator=torch.Generator().manual_seed(i)), x], 1), 999, text.expand(len(x), -1, -1))
            out.append(head.heads["up_blocks-2"](head.features["up_blocks.2"]).softmax(1))
    unet.train(); p = torch.cat(out)
    return float(((p[:, 1:].amax((2, 3)) > 0.5).numpy() == Yte).mean())
for step in range(1, STEPS + 1):
    idx = torch.randint(0, N, (32,), generator=g)
    x = Ltr[idx]
    t = torch.randint(0, 1000, (32,), generator=g)
    unet(torch.cat([torch.randn(x.shape, generator=g), x], 1), t, text.expand(32, -1, -1))
    term, _ = head({"scene_shares": Str[idx]}, torch.arange(32))
    opt.zero_grad(); term.backward(); opt.step()
    if step % 50 == 0:
        print(step, round(term.item(), 4), "presence (max>0.5, t=999)", round(presence(), 3), round(time.time() - t0), "s", flush=True)

"""Scratch: one demo-UNet training step (batch 32, fwd + bwd + AdamW), eager against torch.compile, interleaved."""
import time, torch
from diffusers import UNet2DConditionModel

torch.manual_seed(0)
cfg = UNet2DConditionModel.load_config("icv_deploy/assets/demo/unet")
eager = UNet2DConditionModel.from_config(cfg)
compiled_src = UNet2DConditionModel.from_config(cfg)
compiled_src.load_state_dict(eager.state_dict())
compiled = torch.compile(compiled_src)
opts = {m: torch.optim.AdamW(m.parameters(), 1e-4) for m in (eager, compiled_src)}
x = torch.randn(32, 8, 32, 32); t = torch.randint(0, 1000, (32,)); c = torch.randn(32, 77, 48); y = torch.randn(32, 4, 32, 32)

def step(model, opt):
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(x, t, encoder_hidden_states=c).sample, y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start

start = time.perf_counter()
for _ in range(2):
    step(compiled, opts[compiled_src])
print(f"compile + 2 steps: {time.perf_counter() - start:.1f} s", flush=True)
step(eager, opts[eager])
pairs = [(step(eager, opts[eager]), step(compiled, opts[compiled_src])) for _ in range(6)]
for e, k in pairs:
    print(f"eager {e:.2f} s  compiled {k:.2f} s  ratio {e / k:.2f}")
ratios = sorted(e / k for e, k in pairs)
print("median ratio eager/compiled", (ratios[2] + ratios[3]) / 2)

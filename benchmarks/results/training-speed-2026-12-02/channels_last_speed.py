"""Scratch: one demo-UNet training step (batch 32, fwd + bwd + AdamW), contiguous against channels_last, interleaved."""
import time, torch
from diffusers import UNet2DConditionModel

torch.manual_seed(0)
cfg = UNet2DConditionModel.load_config("icv_deploy/assets/demo/unet")
plain = UNet2DConditionModel.from_config(cfg)
last = UNet2DConditionModel.from_config(cfg)
last.load_state_dict(plain.state_dict())
last = last.to(memory_format=torch.channels_last)
opts = {id(m): torch.optim.AdamW(m.parameters(), 1e-4) for m in (plain, last)}
x = torch.randn(32, 8, 32, 32); t = torch.randint(0, 1000, (32,)); c = torch.randn(32, 77, 48); y = torch.randn(32, 4, 32, 32)
inputs = {id(plain): x, id(last): x.to(memory_format=torch.channels_last)}

def step(model):
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(inputs[id(model)], t, encoder_hidden_states=c).sample, y)
    loss.backward(); opts[id(model)].step(); opts[id(model)].zero_grad(set_to_none=True)
    return time.perf_counter() - start

step(plain); step(last)
pairs = [(step(plain), step(last)) for _ in range(6)]
for e, k in pairs:
    print(f"contiguous {e:.2f} s  channels_last {k:.2f} s  ratio {e / k:.2f}")
ratios = sorted(e / k for e, k in pairs)
print("median ratio", (ratios[2] + ratios[3]) / 2)

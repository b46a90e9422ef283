"""Scratch: where one demo-UNet training step (batch 32, fwd + bwd) spends its CPU time."""
import torch
from diffusers import UNet2DConditionModel
from torch.profiler import profile, ProfilerActivity

torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config("icv_deploy/assets/demo/unet"))
x = torch.randn(32, 8, 32, 32); t = torch.randint(0, 1000, (32,)); c = torch.randn(32, 77, 48); y = torch.randn(32, 4, 32, 32)
def step():
    torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=c).sample, y).backward()
step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=45))

"""Session 11 experiment: give a trained demo UNet a pooled-text path into its time embedding
(diffusers addition_embed_type="text"), zero-initialised so the model first predicts exactly what it did."""
import sys, shutil
from pathlib import Path
import torch
from diffusers import UNet2DConditionModel

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
old = UNet2DConditionModel.from_pretrained(src, subfolder="unet", use_safetensors=True)
config = dict(old.config, addition_embed_type="text", addition_embed_type_num_heads=4)
new = UNet2DConditionModel.from_config(config)
missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
assert not unexpected and all(k.startswith("add_embedding.") for k in missing), (missing, unexpected)
with torch.no_grad():
    new.add_embedding.norm2.weight.zero_(); new.add_embedding.norm2.bias.zero_()
shutil.rmtree(dst / "unet")
new.save_pretrained(dst / "unet", safe_serialization=True)
x = torch.randn(2, 8, 32, 32); t = torch.tensor([10, 500]); h = torch.randn(2, 77, 48)
with torch.no_grad():
    print("max diff", (old(x, t, h).sample - new(x, t, h).sample).abs().max().item(), "new params", sum(p.numel() for n, p in new.named_parameters() if n.startswith("add_embedding")))

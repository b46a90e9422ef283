"""Session 11 experiment: a trained demo model with its text encoder swapped for a random one (seed 0), to be kept
frozen: category words then reach the UNet as far apart as task words."""
import sys, shutil
from pathlib import Path
import torch
from transformers import CLIPTextConfig, CLIPTextModel

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
config = CLIPTextConfig.from_pretrained(src / "text_encoder")
torch.manual_seed(0)
model = CLIPTextModel(config)
shutil.rmtree(dst / "text_encoder")
model.save_pretrained(dst / "text_encoder", safe_serialization=True)

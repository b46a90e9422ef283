"""rawmodel.py CHECKPOINT_DIR EMA_MODEL OUT: the model folder EMA_MODEL with the checkpoint's raw (non-EMA) weights."""
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
ck, ema, out = map(Path, sys.argv[1:])
shutil.rmtree(out, ignore_errors=True); shutil.copytree(ema, out)
for src, dst in (("model.safetensors", "unet/diffusion_pytorch_model.safetensors"), ("model_1.safetensors", "text_encoder/model.safetensors")):
    old = load_file(out / dst); new = load_file(ck / src)
    assert old.keys() == new.keys(), (src, set(old) ^ set(new))
    save_file({k: new[k].to(old[k].dtype).contiguous() for k in old}, out / dst, metadata={"format": "pt"})

"""The four exported submodels, each described in one place (in the manner of TensorRT demoDiffusion's models.py).

A `Submodel` knows which diffusers module it wraps, the names, dtypes and shapes of its ONNX inputs and outputs
(taken from the runtime's contract, `icv_deploy.backends.onnx_backend.graph_io`), its dynamic axes, example and random inputs for export and verification, and the TensorRT optimisation-profile
shapes. Everything is expressed in *image* pixels (H, W) and batch B; latent sizes follow from the VAE scale factor
f = 2 ** (len(vae.block_out_channels) - 1), which is read from the model, never assumed to be 8.

I/O contract (the same for fp32 and fp16 graphs: fp16 graphs cast inside, so callers always feed float32):
    text_encoder  input_ids [B, 77] int64                      -> last_hidden_state [B, 77, D] float32
    unet          sample [B, 8, h, w] float32,
                  timestep [B] float32 (float: samplers such as Euler pass timesteps like 988.9),
                  encoder_hidden_states [B, 77, D] float32     -> out_sample [B, 4, h, w] float32
    vae_encoder   sample [B, 3, H, W] float32 in [-1, 1]        -> latent_sample [B, 4, h, w] (posterior mode, unscaled)
    vae_decoder   latent_sample [B, 4, h, w] (already / scaling) -> sample [B, 3, H, W]
with h = H / f, w = W / f. The text length is fixed at 77 tokens: the runtime always pads to it.

With `vae="tiny"` the two VAE graphs come from the optional `vae_tiny/` (diffusers AutoencoderTiny, TAESD) with the
model's scaling factor folded in (`TinyVaeEncoderModule`, `TinyVaeDecoderModule`), so the contract above holds
unchanged and the runtime runs them like any other folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from icv_deploy.backends.base import ModelInfo
from icv_deploy.backends.onnx_backend import SUBMODEL_NAMES, graph_io  # noqa: F401  (the runtime owns the I/O contract)
from icv_deploy.backends.torch_backend import model_info, tiny_vae_decode, tiny_vae_encode
from icv_deploy.model_files import TINY_VAE_FOLDER

# The diffusers folder each submodel is loaded from (optimum copies that config.json next to each model.onnx).
SOURCE_FOLDER = {"text_encoder": "text_encoder", "unet": "unet", "vae_encoder": "vae", "vae_decoder": "vae"}


def source_folder(name: str, vae: str = "full") -> str:
    """The model sub-folder submodel `name` comes from: vae_tiny/ for the VAE graphs when vae="tiny"."""
    return TINY_VAE_FOLDER if vae == "tiny" and name.startswith("vae") else SOURCE_FOLDER[name]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" or "int64"
    shape: tuple  # ints and symbolic names: "batch", "height", "width" (latent or image pixels, see _concrete)


@dataclass(frozen=True)
class Submodel:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's `dynamic_axes`: every symbolic dimension of every input and output."""
        axes = {}
        for t in self.inputs + self.outputs:
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        return axes

    def shapes(self, batch: int, height: int, width: int, info: ModelInfo) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for `batch` images of `height` x `width` pixels."""
        return {t.name: _concrete(t.shape, batch, height, width, info, self.name) for t in self.inputs}

    def output_shapes(self, batch: int, height: int, width: int, info: ModelInfo) -> dict[str, tuple[int, ...]]:
        return {t.name: _concrete(t.shape, batch, height, width, info, self.name) for t in self.outputs}

    def random_inputs(self, batch: int, height: int, width: int, info: ModelInfo, seed: int = 0) -> dict[str, torch.Tensor]:
        """Inputs drawn from a seeded generator, in the value ranges the pipeline feeds."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.inputs:
            shape = _concrete(t.shape, batch, height, width, info, self.name)
            if t.name == "input_ids":  # any id the text encoder has an embedding for (its config's vocab_size)
                out[t.name] = torch.randint(0, info.vocab_size, shape, generator=g, dtype=torch.int64)
            elif t.name == "timestep":
                out[t.name] = torch.rand(shape, generator=g) * 999.0  # fractional, as Euler-type samplers pass
            elif self.name == "vae_encoder":
                out[t.name] = torch.rand(shape, generator=g) * 2 - 1
            else:
                out[t.name] = torch.randn(shape, generator=g)
        return out


def _concrete(shape: tuple, batch: int, height: int, width: int, info: ModelInfo, submodel: str) -> tuple[int, ...]:
    """Fill symbolic dims. UNet and VAE-decoder inputs are latent-sized; VAE-encoder input and decoder output are pixels."""
    f = info.vae_scale_factor
    dims = []
    for d in shape:
        if d == "batch":
            dims.append(batch)
        elif d in ("height", "width"):
            pixels = height if d == "height" else width
            dims.append(pixels // f if _is_latent(submodel, shape) else pixels)
        else:
            dims.append(int(d))
    return tuple(dims)


def _is_latent(submodel: str, shape: tuple) -> bool:
    # Latent tensors have 4 or 8 channels; images have 3. Only the VAE mixes the two.
    return submodel == "unet" or shape[1] != 3


def submodels(info: ModelInfo) -> dict[str, Submodel]:
    """The four submodels for a model with these sizes, from the runtime's I/O contract (`graph_io`)."""

    def specs(tensors):
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in tensors)

    return {name: Submodel(name, specs(ins), specs(outs)) for name, (ins, outs) in graph_io(info).items()}


# ---- the PyTorch modules that are exported: thin wrappers with plain tensor inputs and one output ----


class TextEncoderModule(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetModule(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeEncoderModule(torch.nn.Module):
    """Image -> posterior mode (= mean), NOT multiplied by the scaling factor (docs/DESIGN.md 3)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample).latent_dist.mode()


class VaeDecoderModule(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class TinyVaeEncoderModule(torch.nn.Module):
    """Image -> UNSCALED latents from the tiny VAE: its scaled latents divided by the model's scaling factor, in the
    graph, so the ONNX contract is the full VAE's (the same function as the torch backend's)."""

    def __init__(self, tiny_vae, scaling_factor: float):
        super().__init__()
        self.tiny_vae, self.scaling_factor = tiny_vae, float(scaling_factor)

    def forward(self, sample):
        return tiny_vae_encode(self.tiny_vae, sample, self.scaling_factor)


class TinyVaeDecoderModule(torch.nn.Module):
    """Latents already divided by the scaling factor -> image: multiplied back in the graph for the tiny decoder."""

    def __init__(self, tiny_vae, scaling_factor: float):
        super().__init__()
        self.tiny_vae, self.scaling_factor = tiny_vae, float(scaling_factor)

    def forward(self, latent_sample):
        return tiny_vae_decode(self.tiny_vae, latent_sample, self.scaling_factor)


def load_module(model_dir: Path, name: str, device: str = "cpu", vae: str = "full") -> torch.nn.Module:
    """Load only what submodel `name` needs (fp32, eval, no grad): one big module in memory at a time.
    `vae="tiny"`: the VAE graphs wrap the AutoencoderTiny of vae_tiny/ (scaling by the main VAE's factor)."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextModel

    kw = dict(torch_dtype=torch.float32, use_safetensors=True)
    if name == "text_encoder":
        module = TextEncoderModule(CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", **kw))
    elif name == "unet":
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **kw)
        unet.set_attn_processor(AttnProcessor2_0())  # the same attention the torch backend runs
        module = UNetModule(unet)
    elif vae == "tiny":
        tiny = AutoencoderTiny.from_pretrained(model_dir, subfolder=TINY_VAE_FOLDER, **kw)
        scaling_factor = model_info(model_dir).scaling_factor  # vae/config.json's, never the tiny VAE's 1.0
        module = (TinyVaeEncoderModule if name == "vae_encoder" else TinyVaeDecoderModule)(tiny, scaling_factor)
    else:
        kl = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **kw)  # not `vae`: that is the choice above
        module = VaeEncoderModule(kl) if name == "vae_encoder" else VaeDecoderModule(kl)
    return module.to(device).eval().requires_grad_(False)


def trt_profile(sub: Submodel, info: ModelInfo, batch: int = 1, min_res: int = 128, opt_res: int = 256,
                max_res: int = 512, static: bool = False, guidance: bool = True
                ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """TensorRT optimisation profile: input name -> (min, opt, max) shape.

    `batch` is the number of images per call. The UNet runs 3 rows per image (classifier-free guidance with
    text+image, image only, neither: docs/DESIGN.md 4), so its batch spans 3 .. 3 * batch; the text encoder is called
    with up to 3 prompts per image; the VAE with 1 .. batch images. Height and width each span min_res .. max_res
    pixels (non-square images), optimised for opt_res x opt_res. `static` pins every dimension to the opt shape
    (needed for CUDA graphs), except the text encoder's batch: the pipeline encodes the K instructions and the empty
    prompt in separate calls, and no CUDA graph replays it. `guidance=False` is a one-pass model (icv_deploy/one_pass.py): one UNet row and one
    prompt per instruction, so the UNet and the text encoder span 1 .. batch.
    """
    f = info.vae_scale_factor
    for res in (min_res, opt_res, max_res):
        if res % f:
            from icv_deploy.errors import IcvError

            raise IcvError(f"resolution {res} is not a multiple of the VAE scale factor {f}")
    if not min_res <= opt_res <= max_res:
        from icv_deploy.errors import IcvError

        raise IcvError(f"need min <= opt <= max resolution, got {min_res}, {opt_res}, {max_res}")
    rows = {"unet": 3, "text_encoder": 3}.get(sub.name, 1) if guidance else 1
    opt_batch = rows * batch
    min_batch = opt_batch if static and sub.name != "text_encoder" else rows if sub.name == "unet" else 1
    if static:
        min_res = max_res = opt_res
    lo = sub.shapes(min_batch, min_res, min_res, info)
    mid = sub.shapes(opt_batch, opt_res, opt_res, info)
    hi = sub.shapes(opt_batch, max_res, max_res, info)
    return {name: (lo[name], mid[name], hi[name]) for name in sub.input_names}

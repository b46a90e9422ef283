"""TensorRT backend: the four calls over an engine folder written by `icv-export build-engines` (DESIGN.md 7, 8).

TensorRT is imported only when a folder is opened. Before any engine is deserialised the folder's metadata is
checked against this machine by pure functions (no TensorRT needed, so they are tested everywhere):
`check_engine_compat` refuses engines built with another TensorRT version or for another GPU, and
`check_shapes_in_profile` turns "shape outside the optimisation profile" into a message that names the fix.

Engines run with the TensorRT 10 tensor API: `set_input_shape`, `set_tensor_address` on torch CUDA tensors,
`execute_async_v3` on the current torch stream. With `cuda_graph=True` the UNet step is replayed from a CUDA
graph per input shape (`cuda_graph.GraphedCall`), which pays off with static shapes (engines built `--static`).
Engine I/O is float32 (int64 token ids) like the ONNX graphs; the engines compute in fp16 inside.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import IcvError, ModelFilesError
from .base import ModelInfo
from .onnx_backend import COPIED_FOLDERS, SUBMODEL_NAMES, check_vae_choice, folder_vae, info_from_manifest, read_manifest

METADATA_NAME = "engines.json"
FORMAT = "icv-deploy-tensorrt"
FORMAT_VERSION = 1
REBUILD_HINT = "rebuild them on this machine with `icv-export build-engines --onnx ONNX_DIR --output DIR`"
INSTALL_HINT = "pip install 'icv-deploy[gpu]' on a machine with an NVIDIA GPU and CUDA"


# ---- pure checks (no TensorRT, no GPU) --------------------------------------------------------------------------
def runtime_identity(trt_module, device_index: int = 0) -> dict:
    """What an engine is tied to: the TensorRT version and the GPU (name, compute capability)."""
    props = torch.cuda.get_device_properties(device_index)
    return {"tensorrt_version": trt_module.__version__, "gpu_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}"}


def check_engine_compat(metadata: dict, runtime: dict, folder: Path | str = "") -> None:
    """Refuse engines built with another TensorRT version or for another GPU: TensorRT plans are not portable."""
    built_trt, have_trt = metadata.get("tensorrt_version"), runtime["tensorrt_version"]
    if built_trt != have_trt:
        raise ModelFilesError(
            f"{folder}: engines were built with TensorRT {built_trt}, this machine has TensorRT {have_trt}: {REBUILD_HINT}"
        )
    built_gpu = (metadata.get("gpu_name"), metadata.get("compute_capability"))
    have_gpu = (runtime["gpu_name"], runtime["compute_capability"])
    if built_gpu != have_gpu:
        raise ModelFilesError(
            f"{folder}: engines were built for {built_gpu[0]} (compute capability {built_gpu[1]}), this GPU is "
            f"{have_gpu[0]} (compute capability {have_gpu[1]}): {REBUILD_HINT}"
        )


def check_shapes_in_profile(name: str, shapes: dict[str, tuple], profile: dict) -> None:
    """Each input shape must lie within the engine's [min, max] profile; say which option widens it if not."""
    for tensor, shape in shapes.items():
        lo, _, hi = profile[tensor]
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            raise IcvError(
                f"{name} engine: input {tensor} has shape {list(shape)}, outside the engine's profile {lo} .. {hi}: "
                "rebuild with a wider --min-resolution/--max-resolution or --batch, or change --resolution"
            )


def check_engine_folder(folder) -> dict:
    """Metadata of an engine folder, after checking format, files and sizes (not the GPU: see check_engine_compat)."""
    folder = Path(folder)
    metadata = read_manifest(folder, METADATA_NAME, "engine folder", "icv-export build-engines")
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFilesError(
            f"{folder / METADATA_NAME}: format {metadata.get('format')!r} version {metadata.get('format_version')}, "
            f"this runtime reads {FORMAT!r} version {FORMAT_VERSION}: {REBUILD_HINT}"
        )
    info = info_from_manifest(metadata, folder)
    if info.unet_in_channels != 8:
        raise ModelFilesError(f"{folder}: the UNet takes {info.unet_in_channels} input channels, an InstructCV model needs 8")
    engines = metadata.get("engines") or {}
    for name in SUBMODEL_NAMES:
        entry = engines.get(name)
        if entry is None:
            raise ModelFilesError(f"{folder}: {METADATA_NAME} lists no {name} engine")
        plan = folder / entry["path"]
        if not plan.is_file():
            raise ModelFilesError(f"{folder}: missing {entry['path']} ({REBUILD_HINT})")
        if plan.stat().st_size != entry["bytes"]:
            raise ModelFilesError(f"{plan}: {plan.stat().st_size} bytes, the metadata says {entry['bytes']} (truncated or replaced)")
    for sub in COPIED_FOLDERS:
        if not (folder / sub).is_dir():
            raise ModelFilesError(f"{folder}: missing the {sub}/ folder")
    return metadata


# ---- running engines (needs TensorRT and CUDA) ------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise IcvError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


class TrtEngine:
    """A deserialised engine and its execution context, run on torch CUDA tensors (TensorRT 10 tensor API)."""

    def __init__(self, plan: Path, profile: dict, device: torch.device):
        trt = import_tensorrt()
        self.name, self.profile, self.device = Path(plan).stem, profile, device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise ModelFilesError(f"{plan}: TensorRT cannot deserialise this engine ({REBUILD_HINT})")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
                 trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        self.dtypes = {n: types[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, **feeds: torch.Tensor) -> torch.Tensor:
        """Run on the current torch CUDA stream; returns the (single) output as a new torch tensor."""
        check_shapes_in_profile(self.name, {k: tuple(v.shape) for k, v in feeds.items()}, self.profile)
        keep = []
        for name in self.inputs:
            tensor = feeds[name].detach().to(self.device, self.dtypes[name]).contiguous()
            keep.append(tensor)  # alive until the enqueue below has been issued
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.name} engine: execute_async_v3 failed")
        return results[0]


class TrtBackend:
    name = "trt"

    def __init__(self, engines: dict[str, TrtEngine], info: ModelInfo, device: torch.device, metadata: dict,
                 cuda_graph: bool = False):
        self.engines, self.info, self.device, self.metadata = engines, info, device, metadata
        self.vae_kind = folder_vae(metadata)  # build-engines copies the ONNX manifest's "vae"; absent means full
        self.dtype = torch.float32  # engine I/O type; the engines compute in fp16 inside
        self._unet = engines["unet"]
        if cuda_graph:
            from .cuda_graph import GraphedCall

            self._unet = GraphedCall(lambda s, t, e: engines["unet"](sample=s, timestep=t, encoder_hidden_states=e))
        self.cuda_graph = cuda_graph

    @classmethod
    def from_folder(cls, folder, device="cuda", dtype=None, cuda_graph: bool = False, vae: str | None = None):
        """`vae` None takes the engines' VAE; "full"/"tiny" must match the ONNX folder they were built from."""
        folder = Path(folder)
        metadata = check_engine_folder(folder)  # before importing TensorRT: a bad folder is a bad folder anywhere
        # Engine folders record the VAE only where build-engines copied it from the ONNX manifest: unknown is no refusal.
        check_vae_choice(metadata.get("vae"), vae, folder, redo="rebuild the engines from an ONNX folder exported")
        if dtype not in (None, "fp16", "float16", torch.float16, "fp32", "float32", torch.float32):
            raise IcvError(f"dtype {dtype!r}: TensorRT engines are built fp16 with float32 I/O (fp16 or None)")
        device = torch.device(device)
        if device.type != "cuda":
            raise IcvError(f"device {device}: the trt engine needs a CUDA device (use engine='onnx' or 'torch' on CPU)")
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise IcvError("no CUDA GPU visible: the trt engine needs one")
        check_engine_compat(metadata, runtime_identity(trt, device.index or 0), folder)
        engines = {
            name: TrtEngine(folder / metadata["engines"][name]["path"], _profile(metadata, name), device)
            for name in SUBMODEL_NAMES
        }
        return cls(engines, info_from_manifest(metadata, folder), device, metadata, cuda_graph)

    # -- the four calls (DESIGN.md 8) --------------------------------------------------------------------------
    def encode_text(self, input_ids):
        return self.engines["text_encoder"](input_ids=input_ids)

    def encode_image(self, pixels):
        return self.engines["vae_encoder"](sample=pixels)

    def predict_noise(self, sample, timestep, text_embeddings):
        b = sample.shape[0]
        timestep = torch.as_tensor(timestep).reshape(-1).expand(b).to(self.device, torch.float32).contiguous()
        return self._unet(sample.to(self.device, torch.float32).contiguous(), timestep,
                          text_embeddings.to(self.device, torch.float32).contiguous())

    def decode_latents(self, latents):
        return self.engines["vae_decoder"](latent_sample=latents)


def _profile(metadata: dict, name: str) -> dict:
    return {k: tuple(tuple(s) for s in v) for k, v in metadata["engines"][name]["profile"].items()}

"""TensorRT backend: the four calls over an engine folder written by `icv-export build-engines` (docs/DESIGN.md 7, 8).

TensorRT is imported only when a folder is opened. Before any engine is deserialised the folder's metadata is
checked against this machine by pure functions (no TensorRT needed, so they are tested everywhere):
`check_engine_compat` refuses engines built with another TensorRT version or for another GPU,
`check_shapes_in_profile` turns "shape outside the optimisation profile" into a message that names the fix, and
`read_plan` refuses a plan whose SHA-256 is not the one engines.json records: a plan is executable code, so
nothing but the file the builder wrote is ever handed to TensorRT.

Engines run with the TensorRT 10 tensor API: `set_input_shape`, `set_tensor_address` on torch CUDA tensors,
`execute_async_v3` on the current torch stream, on the device `cuda:N` names (deserialised and run under
`torch.cuda.device(N)`). With `cuda_graph=True` the UNet step is replayed from a CUDA graph (`graphed_unet`).
Engine I/O is float32 (int64 token ids) like the ONNX graphs; inside, the UNet and text encoder compute in fp16
(Softmax and the timestep path in fp32) and the VAE in fp32 when its config asks for it (export/engine.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import IcvError, ModelFilesError
from .base import ModelInfo
from .onnx_backend import (COPIED_FOLDERS, SUBMODEL_NAMES, check_files, check_vae_choice, folder_vae, info_from_manifest,
                           read_manifest)

METADATA_NAME = "engines.json"
FORMAT = "icv-deploy-tensorrt"
FORMAT_VERSION = 1
REBUILD_HINT = "rebuild them on this machine with `icv-export build-engines --onnx ONNX_DIR --output DIR`"
INSTALL_HINT = "pip install 'icv-deploy[gpu]' on a machine with an NVIDIA GPU and CUDA"


# ---- pure checks (no TensorRT, no GPU) --------------------------------------------------------------------------
def runtime_identity(trt_module, device_index: int | None = None) -> dict:
    """What an engine is tied to: the TensorRT version and the GPU (name, compute capability); None: the current GPU."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if device_index is None else device_index)
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
        if not isinstance(entry.get("sha256"), str):
            raise ModelFilesError(f"{folder / METADATA_NAME}: no sha256 recorded for the {name} engine: {REBUILD_HINT}")
    for sub in COPIED_FOLDERS:
        if not (folder / sub).is_dir():
            raise ModelFilesError(f"{folder}: missing the {sub}/ folder")
    check_files(folder, metadata.get("copied_files") or [])  # icv_config.json (the model's defaults), model_index.json
    return metadata


def read_plan(plan: Path, sha256: str) -> bytes:
    """The plan's bytes, once their SHA-256 equals the recorded one. Hashing the very bytes that will be
    deserialised (not the file, then reading it again) leaves no window for a swap in between."""
    data = Path(plan).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelFilesError(
            f"{plan}: SHA-256 {actual[:16]}... is not the {sha256[:16]}... recorded in {METADATA_NAME}; a plan is "
            f"executable code, so it is not loaded: {REBUILD_HINT}"
        )
    return data


def cuda_device(device) -> torch.device:
    """`cuda` (the current GPU) or `cuda:N` as a device with its index, refused when there is no such GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        raise IcvError(f"device {device}: the trt engine needs a CUDA device (use engine='onnx' or 'torch' on CPU)")
    if not torch.cuda.is_available():
        raise IcvError("no CUDA GPU visible: the trt engine needs one")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise IcvError(f"device cuda:{index}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)


# ---- running engines (needs TensorRT and CUDA) ------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise IcvError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


class TrtEngine:
    """A deserialised engine and its execution context, run on torch CUDA tensors (TensorRT 10 tensor API).

    The engine lives on `device` (a `cuda:N` with its index): it is deserialised, and every context created and
    run, with that GPU current, because TensorRT works on whichever device is current."""

    def __init__(self, plan: Path, sha256: str, profile: dict, device: torch.device):
        trt = import_tensorrt()
        self.name, self.profile, self.device = Path(plan).stem, profile, device
        data = read_plan(plan, sha256)  # before TensorRT sees a byte of it
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ModelFilesError(f"{plan}: TensorRT cannot deserialise this engine ({REBUILD_HINT})")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
                 trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        self.dtypes = {n: types[self.engine.get_tensor_dtype(n)] for n in names}

    def new_context(self):
        """Another execution context of this engine (its own activation memory; TensorRT 10 puts it on profile 0)."""
        with torch.cuda.device(self.device):
            return self.engine.create_execution_context()

    def __call__(self, **feeds: torch.Tensor) -> torch.Tensor:
        return self.run(self.context, **feeds)

    def run(self, context, **feeds: torch.Tensor) -> torch.Tensor:
        """Run on `context` on the current torch CUDA stream; returns the (single) output as a new torch tensor."""
        check_shapes_in_profile(self.name, {k: tuple(v.shape) for k, v in feeds.items()}, self.profile)
        with torch.cuda.device(self.device):
            keep = []
            for name in self.inputs:
                tensor = feeds[name].detach().to(self.device, self.dtypes[name]).contiguous()
                keep.append(tensor)  # alive until the enqueue below has been issued
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise RuntimeError(f"{self.name} engine: TensorRT refused shape {list(tensor.shape)} for {name}")
                context.set_tensor_address(name, tensor.data_ptr())
            results = []
            for name in self.outputs:
                out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device)
                context.set_tensor_address(name, out.data_ptr())
                results.append(out)
            stream = torch.cuda.current_stream(self.device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.name} engine: execute_async_v3 failed")
        return results[0]


def graphed_unet(unet, static_shapes: bool, record=None):
    """The UNet call replayed from CUDA graphs (cuda_graph.GraphedCall), each graph on a context of its own.

    A CUDA graph records the kernels one `execute_async_v3` launched for the shapes then set on the context; TensorRT
    asks for a new capture whenever those shapes change. So a graph must never share its context with calls of
    another shape: a static-shape engine (built `--static`) has one shape, one graph, and records on its own context;
    a dynamic one records each shape's graph on a new context, and eager calls (past `max_graphs`, or a failed
    capture) use the engine's own context, which no graph was recorded on."""
    from .cuda_graph import GraphedCall

    def call_on(context):
        return lambda s, t, e: unet.run(context, sample=s, timestep=t, encoder_hidden_states=e)

    if static_shapes:
        return GraphedCall(call_on(unet.context), record=record, max_graphs=1)
    return GraphedCall(call_on(unet.context), record=record, fn_for_graph=lambda signature: call_on(unet.new_context()))


class TrtBackend:
    name = "trt"

    def __init__(self, engines: dict[str, TrtEngine], info: ModelInfo, device: torch.device, metadata: dict,
                 cuda_graph: bool = False):
        self.engines, self.info, self.device, self.metadata = engines, info, device, metadata
        self.vae_kind = folder_vae(metadata)  # build-engines copies the ONNX manifest's "vae"; absent means full
        self.dtype = torch.float32  # engine I/O type; the engines compute in fp16 inside
        self._unet = engines["unet"]
        if cuda_graph:
            self._unet = graphed_unet(engines["unet"], bool(metadata.get("static_shapes")))
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
        if torch.device(device).type != "cuda":
            raise IcvError(f"device {device}: the trt engine needs a CUDA device (use engine='onnx' or 'torch' on CPU)")
        trt = import_tensorrt()
        device = cuda_device(device)
        check_engine_compat(metadata, runtime_identity(trt, device.index), folder)
        engines = {}
        for name in SUBMODEL_NAMES:
            entry = metadata["engines"][name]
            engines[name] = TrtEngine(folder / entry["path"], entry["sha256"], _profile(metadata, name), device)
        return cls(engines, info_from_manifest(metadata, folder), device, metadata, cuda_graph)

    # -- the four calls (docs/DESIGN.md 8) ---------------------------------------------------------------------
    def encode_text(self, input_ids):
        return self.engines["text_encoder"](input_ids=input_ids)

    def encode_image(self, pixels):
        return self.engines["vae_encoder"](sample=pixels)

    def predict_noise(self, sample, timestep, text_embeddings):
        b = sample.shape[0]
        timestep = torch.as_tensor(timestep).reshape(-1).expand(b).to(self.device, torch.float32).contiguous()
        with torch.cuda.device(self.device):  # a CUDA graph is captured and replayed on the current device
            return self._unet(sample.to(self.device, torch.float32).contiguous(), timestep,
                              text_embeddings.to(self.device, torch.float32).contiguous())

    def decode_latents(self, latents):
        return self.engines["vae_decoder"](latent_sample=latents)


def _profile(metadata: dict, name: str) -> dict:
    return {k: tuple(tuple(s) for s in v) for k, v in metadata["engines"][name]["profile"].items()}

"""OpenVINO backend: the four calls on a CPU, from an ONNX folder (`icv-export onnx`) or an OpenVINO IR folder
(`icv-export openvino`), in bf16 where the CPU has it, f32 elsewhere, or with an int8 UNet (docs/DESIGN.md 7, 8).

Why: on CPUs ONNX Runtime already runs the fp32 UNet at the machine's FMA peak; OpenVINO's bf16 kernels (AMX,
AVX512-BF16) and int8 kernels (VNNI, AMX) are what go past it.

    manifest.json                     format "icv-deploy-openvino": precision (f32 | bf16 | int8), hashes, I/O
    {text_encoder,unet,vae_encoder,vae_decoder}/openvino_model.xml + .bin + config.json   (optimum-intel layout)
    tokenizer/, scheduler/, model_index.json [, icv_config.json]   carried over from the ONNX folder

The IR folder's contract (`check_ir_folder`) lives here, beside the ONNX one it reuses (graph I/O, file records,
model_info, VAE choice), because the runtime never imports the exporter (docs/DESIGN.md 2).

Precision is a compile-time hint (INFERENCE_PRECISION_HINT): `dtype` None takes the folder's own (an ONNX folder and
bf16 / int8 IR folders run bf16, f32 IR folders f32), but only where the CPU reports BF16 among its optimisation
capabilities; elsewhere it silently runs f32 and logs the reason at debug level (`--debug`). An int8 folder's UNet
runs its quantized layers in int8 whatever the hint; the hint covers the rest.

Shapes: each call is compiled for its static input shapes (one working size and batch is what a service sees), and
compiled models are kept per shape (`max_compiled` per submodel, least recently used dropped). Each compiled model
holds its own (repacked) weights: a service that sees many sizes should lower `max_compiled` or pass
`static_shapes=False` (one dynamic-shape model, somewhat slower per call).

The model cache (`cache_dir`): OpenVINO's CACHE_DIR (one subfolder per precision) makes a second start load the
compiled blobs instead of recompiling. Models are compiled from files, never from a model object in memory: for a
file OpenVINO maps the cached blob, while for a model object it first hashes every weight (touching all of them) and
reads the blob in beside them, 1.8 GB more peak memory for the full-size UNet (6.1 GB against 4.3 GB for the whole
pipeline). So each static shape is written once as its own IR under static-ir/ (weights in f16 for bf16 inference,
f32 otherwise), keyed by the submodel's hashes in the manifest and the shape, and compiled from there; with the
cache off, models are read and reshaped in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_dir
from ..errors import IcvError, ModelFilesError
from .base import ModelInfo
from .onnx_backend import (FORMAT as ONNX_FORMAT, MANIFEST_NAME, NUMPY_TYPES, SUBMODEL_NAMES, check_exported_folder,
                           check_files, check_onnx_folder, check_vae_choice, folder_vae, info_from_manifest, read_manifest)

log = logging.getLogger("icv_deploy")

# ---- the contract between IR folders and this runtime (export/openvino_export.py writes what these read) ---------
FORMAT = "icv-deploy-openvino"
FORMAT_VERSION = 1
PRECISIONS = ("f32", "bf16", "int8")  # what an IR folder holds; int8 = bf16 folder with a quantized UNet
IR_FILE = "openvino_model.xml"  # optimum-intel's name; the weights are openvino_model.bin beside it
INSTALL_HINT = "pip install 'icv-deploy[openvino]'"
WRITERS = "icv-export onnx` or `icv-export openvino"

# dtype argument -> inference precision (OpenVINO's element type names); None: the folder's default
PRECISION_NAMES = {None: None, "f32": "f32", "fp32": "f32", "float32": "f32", torch.float32: "f32",
                   "bf16": "bf16", "bfloat16": "bf16", torch.bfloat16: "bf16", "int8": "int8"}
OV_TYPES = {"float32": "f32", "int64": "i64"}


def default_cache_dir() -> Path:
    """$ICV_OPENVINO_CACHE, else openvino/ in icv-deploy's cache folder ($ICV_CACHE or ~/.cache/icv-deploy)."""
    if os.environ.get("ICV_OPENVINO_CACHE"):
        return Path(os.environ["ICV_OPENVINO_CACHE"])
    return Path(os.environ.get("ICV_CACHE", Path.home() / ".cache" / "icv-deploy")) / "openvino"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise IcvError(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def cpu_capabilities(core) -> list[str]:
    """What the CPU plugin says this CPU accelerates ("BF16", "INT8", "FP32", ...)."""
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def choose_precision(asked: str | None, folder_default: str, capabilities: list[str]) -> tuple[str, str]:
    """(inference precision "bf16" | "f32", the reason): bf16 only where the CPU reports BF16."""
    wanted = asked or folder_default
    if wanted == "f32":
        return "f32", "f32 asked for" if asked else "the folder was exported for f32"
    if "BF16" in capabilities:
        return "bf16", "bf16 asked for" if asked else "bf16 by default: the CPU reports BF16"
    return "f32", f"this CPU has no bf16 support (OpenVINO reports {', '.join(capabilities)}): running f32"


# ---- checking folders -------------------------------------------------------------------------------------------
def check_ir_folder(folder, verify_hashes: bool = False) -> dict:
    """Return the manifest of an IR folder, or raise ModelFilesError naming the first thing that does not match."""
    folder = Path(folder)
    manifest = read_manifest(folder, MANIFEST_NAME, "OpenVINO IR folder", "icv-export openvino")
    check_exported_folder(folder, manifest, FORMAT, FORMAT_VERSION, PRECISIONS, "icv-export openvino", verify_hashes)
    for name in SUBMODEL_NAMES:
        entry = manifest["submodels"][name]
        if not isinstance(entry.get("weights"), dict):
            raise ModelFilesError(f"{folder}: {MANIFEST_NAME} lists no {name} weights")
        check_files(folder, [entry, entry["weights"]], verify_hashes)
    return manifest


def check_folder(folder, verify_hashes: bool = False) -> tuple[dict, str]:
    """(manifest, kind) of an ONNX folder ("onnx") or an IR folder ("ir"), checked; anything else is refused."""
    manifest = read_manifest(Path(folder), MANIFEST_NAME, "ONNX or OpenVINO IR folder", WRITERS)
    if manifest.get("format") == ONNX_FORMAT:
        return check_onnx_folder(folder, verify_hashes=verify_hashes), "onnx"
    if manifest.get("format") == FORMAT:
        return check_ir_folder(folder, verify_hashes=verify_hashes), "ir"
    raise ModelFilesError(f"{Path(folder) / MANIFEST_NAME}: format {manifest.get('format')!r}, the openvino engine reads "
                          f"{ONNX_FORMAT!r} or {FORMAT!r} folders")


def check_model_io(model, entry: dict, path: Path) -> None:
    """The model's inputs must be the manifest's: names, element types and every fixed dimension."""
    actual = {}
    for port in model.inputs:
        for name in port.get_names():
            actual[name] = port
    for spec in entry["inputs"]:
        port = actual.get(spec["name"])
        if port is None:
            raise ModelFilesError(f"{path}: model has no input {spec['name']!r} (has {sorted(actual)})")
        if port.get_element_type().get_type_name() != OV_TYPES[spec["dtype"]]:
            raise ModelFilesError(f"{path}: input {spec['name']} is {port.get_element_type().get_type_name()}, "
                                  f"expected {OV_TYPES[spec['dtype']]}")
        shape = port.get_partial_shape()
        fixed_actual = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else None
        fixed_expected = [d if isinstance(d, int) else None for d in spec["shape"]]
        if fixed_actual != fixed_expected:
            raise ModelFilesError(f"{path}: input {spec['name']} has shape {shape}, the runtime feeds {spec['shape']}")


# ---- the backend ------------------------------------------------------------------------------------------------
class OpenVinoBackend:
    name = "openvino"

    def __init__(self, core, sources: dict[str, Path], info: ModelInfo, manifest: dict, kind: str,
                 inference_precision: str, precision_reason: str, config: dict, static_shapes: bool = True,
                 max_compiled: int = 4, cache_dir: Path | None = None):
        self.core, self.sources, self.info, self.manifest, self.kind = core, sources, info, manifest, kind
        self.cache_dir = cache_dir  # this precision's folder of compiled blobs, or None: no model cache
        self.device, self.dtype = torch.device("cpu"), torch.float32  # model I/O type, for every precision
        self.inference_precision, self.precision_reason = inference_precision, precision_reason
        # What the numbers are computed in: int8 for a quantized folder (its UNet), else the inference precision.
        self.precision = "int8" if manifest.get("precision") == "int8" else inference_precision
        self.vae_kind = folder_vae(manifest)
        self.config, self.static_shapes, self.max_compiled = config, static_shapes, max(1, int(max_compiled))
        self.compiled: dict[str, OrderedDict] = {name: OrderedDict() for name in SUBMODEL_NAMES}
        self._specs = manifest["submodels"]

    @classmethod
    def from_folder(cls, folder, device="cpu", dtype=None, vae: str | None = None, cache_dir=...,
                    static_shapes: bool = True, threads: int | None = None, max_compiled: int = 4,
                    verify_hashes: bool = False):
        """Open an ONNX or IR folder. `dtype` None: the folder's precision (bf16 where the CPU has it); "fp32"/"bf16"
        choose the inference precision; "int8" must match an int8 folder. `cache_dir`: OpenVINO's model cache
        (default `default_cache_dir()`; None turns it off). `threads`: INFERENCE_NUM_THREADS (default: all cores)."""
        folder = Path(folder)
        if torch.device(device).type != "cpu":
            raise IcvError(f"device {device}: the openvino engine runs on the CPU (use engine='onnx' or 'trt' on CUDA)")
        if dtype not in PRECISION_NAMES:
            raise IcvError(f"dtype {dtype!r}: the openvino engine runs fp32 or bf16 (or an int8 folder's int8)")
        asked = PRECISION_NAMES[dtype]
        manifest, kind = check_folder(folder, verify_hashes=verify_hashes)
        check_vae_choice(folder_vae(manifest), vae, folder)
        folder_precision = manifest["precision"] if kind == "ir" else "bf16"
        if asked == "int8":
            if folder_precision != "int8":
                raise ModelFilesError(f"{folder}: not an int8 folder, dtype int8 was asked for (quantize it with "
                                      "`icv-export openvino --onnx ONNX_DIR --output DIR --precision int8`)")
            asked = None
        ov = import_openvino()
        core = ov.Core()
        inference_precision, reason = choose_precision(asked, "f32" if folder_precision == "f32" else "bf16",
                                                       cpu_capabilities(core))
        (log.warning if asked == "bf16" and inference_precision != "bf16" else log.debug)("openvino: %s", reason)
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is ...:
            cache_dir = default_cache_dir()
        if cache_dir is not None:
            # OpenVINO 2026.4's cache key leaves the compile options out: a blob compiled for f32 loads under a bf16
            # hint (and gives NaN). So each precision (and thread count) has its own cache folder.
            cache_dir = Path(cache_dir) / (inference_precision + (f"-{int(threads)}threads" if threads else ""))
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        sources = {}
        for name in SUBMODEL_NAMES:  # read once to check, then dropped: compiling reads what it needs
            entry = manifest["submodels"][name]
            sources[name] = folder / entry["path"]
            check_model_io(read_model(core, sources[name]), entry, sources[name])
        return cls(core, sources, info_from_manifest(manifest, folder), manifest, kind, inference_precision, reason,
                   config, static_shapes, max_compiled, cache_dir)

    # -- the four calls (docs/DESIGN.md 8) --------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._run("text_encoder", {"input_ids": input_ids})

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run("vae_encoder", {"sample": pixels})

    def predict_noise(self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])  # a scalar or [B]: the model takes [B]
        return self._run("unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": text_embeddings})

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", {"latent_sample": latents})

    # -- compiling and running ---------------------------------------------------------------------------------
    def compiled_model(self, name: str, shapes: dict[str, tuple[int, ...]]):
        """The compiled model of submodel `name` for these input shapes (compiled on first use, then kept)."""
        cache = self.compiled[name]
        key = tuple(sorted(shapes.items())) if self.static_shapes else None
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        compiled = self.core.compile_model(self.model_to_compile(name, shapes), "CPU", self.config)
        log.debug("openvino: %s compiled for %s (%s)%s", name, dict(shapes), self.inference_precision,
                  ", from the model cache" if _loaded_from_cache(compiled) else "")
        cache[key] = compiled
        while len(cache) > self.max_compiled:
            cache.popitem(last=False)
        return compiled

    def model_to_compile(self, name: str, shapes: dict[str, tuple[int, ...]]):
        """A file to compile (OpenVINO maps its cached blob: see the module's docstring), or without a model cache a
        model read and reshaped in memory."""
        if not self.static_shapes:
            return str(self.sources[name])  # the stored model, dynamic shapes
        if self.cache_dir is None:
            return self.reshaped_model(name, shapes)
        path = self.static_ir_path(name, shapes)
        if not path.exists():
            with atomic_dir(path.parent) as tmp:
                import openvino

                openvino.save_model(self.reshaped_model(name, shapes), str(tmp / IR_FILE),
                                    compress_to_fp16=self.inference_precision == "bf16")
            log.debug("openvino: %s for %s written to %s", name, dict(shapes), path.parent)
        return str(path)

    def reshaped_model(self, name: str, shapes: dict[str, tuple[int, ...]]):
        """Submodel `name` read from its folder and reshaped to these static input shapes, in memory."""
        model = read_model(self.core, self.sources[name])
        model.reshape({k: list(v) for k, v in shapes.items()})
        return model

    def static_ir_path(self, name: str, shapes: dict[str, tuple[int, ...]]) -> Path:
        """Where the static-shape IR of submodel `name` lives: beside the compiled blobs, named by the submodel's
        files (their hashes in the manifest) and the shapes, so another model or shape never reuses it."""
        files = json.dumps(self._specs[name], sort_keys=True).encode()
        shape = "_".join("x".join(map(str, shapes[k])) for k in sorted(shapes))
        return self.cache_dir / "static-ir" / f"{name}-{hashlib.sha256(files).hexdigest()[:16]}-{shape}" / IR_FILE

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        dtypes = {spec["name"]: spec["dtype"] for spec in self._specs[name]["inputs"]}
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy().astype(NUMPY_TYPES[dtypes[k]], copy=False))
                  for k, v in feeds.items()}
        compiled = self.compiled_model(name, {k: tuple(a.shape) for k, a in arrays.items()})
        out = compiled(arrays)[0]  # a copy: the infer request's buffer is reused by the next call
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def read_model(core, path: Path):
    try:
        return core.read_model(str(path))
    except Exception as exc:  # OpenVINO reports unreadable models as assorted RuntimeErrors
        reason = " ".join(str(exc).split())[:300]
        raise ModelFilesError(f"{path}: OpenVINO cannot read it ({reason})") from None


def _loaded_from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except RuntimeError:
        return False

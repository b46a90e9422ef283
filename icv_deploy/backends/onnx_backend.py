"""ONNX Runtime backend: the four calls over an ONNX folder written by `icv-export onnx` (docs/DESIGN.md 7, 8).

The contract between an exported folder and this runtime lives here (`graph_io`, `check_onnx_folder`): the
runtime never imports the exporter (docs/DESIGN.md 2); the exporter writes what these functions read.
The folder's manifest is checked before any session is created (missing or truncated files, wrong channels, a
graph I/O type this runtime does not feed, another VAE than the one asked for); each session's inputs are then
checked against the manifest, so a graph swapped behind the manifest's back is refused too. Sessions are created
once, in `from_folder`.

Every graph takes and returns float32 (int64 token ids), whatever its precision: fp16 graphs cast inside. So
`backend.dtype` is always float32 and `dtype` only selects (or checks) the folder's precision.

On CPU tensors go through numpy (no copy for contiguous float32 tensors). On CUDA (onnxruntime-gpu) inputs and
outputs are bound to torch CUDA tensors with I/O binding, so latents never leave the GPU between steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import IcvError, ModelFilesError
from ..model_files import VAE_KINDS, parse_vae
from .base import ModelInfo

GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
SUBMODEL_NAMES = ("text_encoder", "unet", "vae_encoder", "vae_decoder")

# ---- the contract between exported folders and this runtime (the exporter writes what these read) ----------------
MANIFEST_NAME = "manifest.json"
FORMAT = "icv-deploy-onnx"
FORMAT_VERSION = 1
IO_DTYPE = "float32"  # fp16 graphs cast inside: every graph takes and returns float32 (token ids are int64)
PRECISIONS = ("fp32", "fp16")
COPIED_FOLDERS = ("tokenizer", "scheduler")
# Copied from the model folder where it has them; the manifest lists them under "copied_files" (path, bytes, sha256).
# icv_config.json carries the model's own defaults (sampler, steps, resolution ...), so every engine answers alike.
COPIED_FILES = ("model_index.json", "icv_config.json")


def graph_io(info: ModelInfo) -> dict[str, tuple[list[dict], list[dict]]]:
    """Submodel -> (inputs, outputs), each {"name", "dtype", "shape"}; symbolic dims "batch", "height", "width".

    The UNet and the VAE decoder input are latent-sized (h = H / f), the VAE encoder input and decoder output are
    pixels. The timestep is float32 [B]: samplers such as Euler pass fractional timesteps (988.9). The text length
    is fixed at 77 tokens (the runtime always pads to it).
    """
    c, d, n = info.latent_channels, info.text_hidden_size, info.max_text_tokens

    def t(name, dtype, *shape):
        return {"name": name, "dtype": dtype, "shape": list(shape)}

    img = ("batch", 3, "height", "width")
    lat = ("batch", c, "height", "width")
    return {
        "text_encoder": ([t("input_ids", "int64", "batch", n)], [t("last_hidden_state", "float32", "batch", n, d)]),
        "unet": (
            [t("sample", "float32", "batch", info.unet_in_channels, "height", "width"),
             t("timestep", "float32", "batch"),
             t("encoder_hidden_states", "float32", "batch", n, d)],
            [t("out_sample", "float32", *lat)],
        ),
        "vae_encoder": ([t("sample", "float32", *img)], [t("latent_sample", "float32", *lat)]),
        "vae_decoder": ([t("latent_sample", "float32", *lat)], [t("sample", "float32", *img)]),
    }


def read_manifest(folder: Path, name: str = MANIFEST_NAME, kind: str = "ONNX folder", writer: str = "icv-export onnx") -> dict:
    import json

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFilesError(f"{folder}: no such {kind}")
    path = folder / name
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFilesError(f"{folder}: no {name} (not a folder written by `{writer}`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFilesError(f"{path}: not valid JSON") from None
    if not isinstance(manifest, dict):
        raise ModelFilesError(f"{path}: not a manifest (expected a JSON object)")
    return manifest


def folder_vae(manifest: dict) -> str:
    """Which VAE the vae_* graphs came from: "full" (vae/) or "tiny" (vae_tiny/, TAESD). Either way the graphs keep
    the same I/O contract (the exporter folds the tiny VAE's scaling into them). Folders from before the tiny VAE
    record nothing: full."""
    return manifest.get("vae", "full")


def check_vae_choice(recorded: str | None, asked: str | None, folder: Path | str = "", redo: str = "re-export") -> None:
    """`asked` None takes whatever the folder has; "full" / "tiny" must match what it was exported with."""
    if parse_vae(asked) is None:
        return
    if recorded is not None and recorded != asked:
        raise ModelFilesError(f"{folder}: its VAE graphs come from the {recorded} VAE, vae={asked} was asked for "
                              f"({redo} with `icv-export onnx --vae {asked}`, or leave vae unset)")


def info_from_manifest(manifest: dict, folder: Path | str = "") -> ModelInfo:
    try:
        return ModelInfo(**manifest["model_info"])
    except (KeyError, TypeError) as exc:
        raise ModelFilesError(f"{folder}: the manifest has no usable model_info ({exc})") from None


def check_onnx_folder(folder, precision: str | None = None, verify_hashes: bool = False) -> dict:
    """Return the manifest of an ONNX folder, or raise ModelFilesError naming the first thing that does not match."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_exported_folder(folder, manifest, FORMAT, FORMAT_VERSION, PRECISIONS, "icv-export", verify_hashes)
    if precision is not None and manifest["precision"] != precision:
        raise ModelFilesError(f"{folder}: the graphs are {manifest['precision']}, {precision} was asked for "
                              f"(export with{'' if precision == 'fp16' else 'out'} --fp16, or ask for {manifest['precision']})")
    for name in SUBMODEL_NAMES:
        entry = manifest["submodels"][name]
        check_files(folder, [entry] + ([entry["external_data"]] if entry.get("external_data") else []), verify_hashes)
    return manifest


def check_exported_folder(folder: Path, manifest: dict, fmt: str, version: int, precisions, tool: str,
                          verify_hashes: bool = False) -> None:
    """What ONNX and OpenVINO folders share: format, version, precision, I/O type, VAE kind, an 8-channel UNet,
    every submodel listed with the inputs and outputs this runtime feeds, the copied folders and files."""
    path = folder / MANIFEST_NAME
    if manifest.get("format") != fmt:
        raise ModelFilesError(f"{path}: format {manifest.get('format')!r}, expected {fmt!r}")
    if manifest.get("format_version") != version:
        raise ModelFilesError(f"{path}: format version {manifest.get('format_version')}, this runtime reads version "
                              f"{version}: re-export with this version of `{tool}`")
    if manifest.get("precision") not in precisions:
        raise ModelFilesError(f"{path}: unknown precision {manifest.get('precision')!r}")
    if manifest.get("io_dtype") != IO_DTYPE:
        raise ModelFilesError(f"{folder}: model I/O type {manifest.get('io_dtype')!r}, this runtime feeds {IO_DTYPE}")
    if folder_vae(manifest) not in VAE_KINDS:
        raise ModelFilesError(f"{path}: unknown vae {folder_vae(manifest)!r}, this runtime knows {', '.join(VAE_KINDS)}")
    info = info_from_manifest(manifest, folder)
    if info.unet_in_channels != 8:
        raise ModelFilesError(f"{folder}: the UNet takes {info.unet_in_channels} input channels, an InstructCV model "
                              "needs 8 (noisy latent + image latent)")
    expected = graph_io(info)
    entries = manifest.get("submodels") or {}
    for name in SUBMODEL_NAMES:
        entry = entries.get(name)
        if not isinstance(entry, dict):
            raise ModelFilesError(f"{folder}: {MANIFEST_NAME} lists no {name}")
        for key, specs in zip(("inputs", "outputs"), expected[name]):
            if entry.get(key) != specs:
                raise ModelFilesError(f"{folder}: {name} {key} {_brief(entry.get(key))} do not match what this "
                                      f"runtime feeds {_brief(specs)}")
    for sub in COPIED_FOLDERS:
        if not (folder / sub).is_dir():
            raise ModelFilesError(f"{folder}: missing the {sub}/ folder")
    check_files(folder, manifest.get("copied_files") or [], verify_hashes)


def check_files(folder: Path, files: list[dict], verify_hashes: bool = False) -> None:
    """Each {"path", "bytes", "sha256"} must exist with that size (and, if asked, that content hash)."""
    for f in files:
        path = folder / f["path"]
        if not path.is_file():
            raise ModelFilesError(f"{folder}: missing {f['path']} (re-export the folder)")
        if path.stat().st_size != f["bytes"]:
            raise ModelFilesError(f"{path}: {path.stat().st_size} bytes, the manifest says {f['bytes']} "
                                  "(truncated or replaced file)")
        if verify_hashes and sha256_file(path) != f["sha256"]:
            raise ModelFilesError(f"{path}: content hash differs from the manifest (modified file)")


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _brief(tensors) -> str:
    if not isinstance(tensors, list):
        return repr(tensors)
    return "[" + ", ".join(f"{t.get('name')}{t.get('shape')}" for t in tensors if isinstance(t, dict)) + "]"


# ---- ONNX Runtime ---------------------------------------------------------------------------------------------
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}
NUMPY_TYPES = {"float32": np.float32, "int64": np.int64}
TORCH_TYPES = {"float32": torch.float32, "int64": torch.int64}
PRECISION_NAMES = {None: None, "fp32": "fp32", "float32": "fp32", torch.float32: "fp32",
                   "fp16": "fp16", "float16": "fp16", torch.float16: "fp16"}


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise IcvError("ONNX Runtime is not installed: pip install 'icv-deploy[onnx]' (or [gpu] for CUDA)") from None
    return onnxruntime


def session_options(submodel: str, device: torch.device, graph_optimization: str = "all",
                    intra_op_threads: int | None = None, inter_op_threads: int | None = None):
    """The tuned options of `ort_tuning` (threads per core, sequential execution, memory pattern, ...),
    with the level of graph optimisation and the thread counts a user may set."""
    from .ort_tuning import session_options as tuned_options

    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise IcvError(f"graph_optimization {graph_optimization!r}: choose one of {', '.join(GRAPH_OPTIMIZATION)}")
    level = "none" if graph_optimization == "disable" else graph_optimization
    options = tuned_options(submodel, device.type, threads=intra_op_threads, optimization=level)
    if inter_op_threads is not None:
        options.inter_op_num_threads = int(inter_op_threads)
    return options


def providers_for(device: torch.device) -> list:
    ort = _import_ort()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise IcvError(
                "ONNX Runtime here has no CUDA provider: pip install 'icv-deploy[gpu]' (onnxruntime-gpu) or use device='cpu'"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise IcvError(f"device {device}: the onnx engine runs on cpu or cuda")


def check_session(name: str, session, entry: dict, folder: Path) -> None:
    """The session's inputs must be the manifest's: names, types and every fixed dimension (e.g. 8 UNet channels)."""
    actual = {i.name: i for i in session.get_inputs()}
    for spec in entry["inputs"]:
        got = actual.get(spec["name"])
        if got is None:
            raise ModelFilesError(f"{folder / entry['path']}: graph has no input {spec['name']!r} (has {sorted(actual)})")
        if got.type != ORT_TYPES[spec["dtype"]]:
            raise ModelFilesError(f"{folder / entry['path']}: input {spec['name']} is {got.type}, expected {ORT_TYPES[spec['dtype']]}")
        fixed_expected = [d if isinstance(d, int) else None for d in spec["shape"]]
        fixed_actual = [d if isinstance(d, int) else None for d in got.shape]
        if fixed_expected != fixed_actual:
            raise ModelFilesError(
                f"{folder / entry['path']}: input {spec['name']} has shape {got.shape}, the runtime feeds {spec['shape']}"
            )


class OnnxBackend:
    name = "onnx"

    def __init__(self, sessions: dict, info: ModelInfo, device: torch.device, manifest: dict, io_binding: bool):
        self.sessions, self.info, self.device, self.manifest = sessions, info, device, manifest
        self.dtype = torch.float32  # graph I/O type, for every precision
        self.precision = manifest["precision"]
        self.vae_kind = folder_vae(manifest)
        self.io_binding = io_binding
        self._specs = {name: entry for name, entry in manifest["submodels"].items()}

    @classmethod
    def from_folder(cls, folder, device="cpu", dtype=None, graph_optimization: str = "all",
                    intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                    io_binding: bool | None = None, providers: list | None = None, verify_hashes: bool = False,
                    vae: str | None = None):
        """Open an ONNX folder. `dtype` None takes the folder's precision; fp32/fp16 must match it. Likewise `vae`
        None takes the folder's VAE; "full"/"tiny" must match what it was exported with."""
        ort = _import_ort()
        folder = Path(folder)
        if dtype not in PRECISION_NAMES:
            raise IcvError(f"dtype {dtype!r}: an ONNX folder is fp32 or fp16 (bf16 is torch-only)")
        manifest = check_onnx_folder(folder, precision=PRECISION_NAMES[dtype], verify_hashes=verify_hashes)
        check_vae_choice(folder_vae(manifest), vae, folder)
        device = torch.device(device)
        providers = providers or providers_for(device)
        sessions = {}
        for name in SUBMODEL_NAMES:
            entry = manifest["submodels"][name]
            options = session_options(name, device, graph_optimization, intra_op_threads, inter_op_threads)
            try:
                session = ort.InferenceSession(str(folder / entry["path"]), options, providers=providers)
            except Exception as exc:  # ORT reports broken graphs as assorted exception types
                reason = " ".join(str(exc).split())[:300]
                raise ModelFilesError(f"{folder / entry['path']}: ONNX Runtime cannot load it ({reason})") from None
            check_session(name, session, entry, folder)
            sessions[name] = session
        use_binding = device.type == "cuda" if io_binding is None else bool(io_binding)
        return cls(sessions, info_from_manifest(manifest, folder), device, manifest, use_binding)

    # -- the four calls (docs/DESIGN.md 8) --------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        return self._run("text_encoder", {"input_ids": input_ids}, (b, self.info.max_text_tokens, self.info.text_hidden_size))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        f = self.info.vae_scale_factor
        return self._run("vae_encoder", {"sample": pixels}, (b, self.info.latent_channels, h // f, w // f))

    def predict_noise(self, sample: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        b, _, h, w = sample.shape
        timestep = torch.as_tensor(timestep).reshape(-1).expand(b)  # a scalar or [B]: the graph takes [B] float32
        feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": text_embeddings}
        return self._run("unet", feeds, (b, self.info.latent_channels, h, w))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        b, _, h, w = latents.shape
        f = self.info.vae_scale_factor
        return self._run("vae_decoder", {"latent_sample": latents}, (b, 3, h * f, w * f))

    # -- running one session -----------------------------------------------------------------------------------
    def _run(self, name: str, feeds: dict[str, torch.Tensor], output_shape: tuple[int, ...]) -> torch.Tensor:
        dtypes = {spec["name"]: spec["dtype"] for spec in self._specs[name]["inputs"]}
        if self.io_binding:
            return self._run_bound(name, feeds, dtypes, output_shape)
        arrays = {k: np.ascontiguousarray(v.detach().to("cpu", TORCH_TYPES[dtypes[k]]).numpy()) for k, v in feeds.items()}
        out = self.sessions[name].run(None, arrays)[0]
        return torch.from_numpy(out).to(self.device)

    def _run_bound(self, name, feeds, dtypes, output_shape) -> torch.Tensor:
        """I/O binding: ONNX Runtime reads the torch tensors' device memory and writes into a preallocated output."""
        session = self.sessions[name]
        device_type, device_id = self.device.type, self.device.index or 0
        binding = session.io_binding()
        keep = []  # the converted inputs must live until the run ends
        for k, v in feeds.items():
            v = v.detach().to(self.device, TORCH_TYPES[dtypes[k]]).contiguous()
            keep.append(v)
            binding.bind_input(k, device_type, device_id, NUMPY_TYPES[dtypes[k]], tuple(v.shape), v.data_ptr())
        out = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        out_name = self._specs[name]["outputs"][0]["name"]
        binding.bind_output(out_name, device_type, device_id, np.float32, tuple(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream: inputs must be ready
        session.run_with_iobinding(binding)
        return out

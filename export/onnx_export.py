"""Export a diffusers-format InstructCV model to an ONNX folder (optimum layout, docs/DESIGN.md 7).

    out/model_index.json, manifest.json, tokenizer/, scheduler/
    out/text_encoder/model.onnx + config.json      out/unet/model.onnx [+ model.onnx_data] + config.json
    out/vae_encoder/model.onnx + config.json       out/vae_decoder/model.onnx + config.json

Exporter choice: torch.onnx.export with `dynamo=False` (the TorchScript tracer). With torch 2.13 both exporters
produce correct graphs with dynamic batch/height/width for these modules, but the tracer
  * exports the full-size UNet in ~30 s at ~4.5 GB peak RSS (the module's own weights plus little more), writing
    its weights straight to external files, where the dynamo exporter takes minutes;
  * names output dimensions after the input axes ("height", "width"), where the dynamo exporter writes
    expressions such as "2*(((height - 1)//2)) + 2" that TensorRT profiles and optimum users must then decode;
  * is what optimum and TensorRT's demoDiffusion export Stable Diffusion with.
Shapes the tracer might bake in are caught by verification at another (non-square) shape.

`vae="tiny"` exports the two VAE graphs from the optional vae_tiny/ (TAESD) with the scaling folded in: the folder
contract stays the full VAE's, the manifest records `"vae": "tiny"` and the vae_* folders get the tiny VAE's
config.json. The VAE choice is part of what an interrupted export must match to resume.

Memory: one submodel is in memory at a time; the PyTorch reference for verification is computed before the module
is freed and the ONNX Runtime session is created after. Each submodel folder is written under a temporary name and
renamed when complete, and an interrupted export resumes from the finished submodels.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
import warnings
from pathlib import Path

import onnx
import torch

from icv_deploy import __version__
from icv_deploy.atomic import atomic_dir, copy_file, write_json
from icv_deploy.backends.torch_backend import model_info
from icv_deploy.errors import IcvError
from icv_deploy.model_files import check_diffusers_folder, check_tiny_vae_folder, parse_vae, read_json, resolve_model

from . import manifest as mf
from . import optimize, verify
from .submodels import SUBMODEL_NAMES, load_module, source_folder, submodels

STATE_NAME = ".icv-export-state.json"
# An interrupted export resumes only with the same source and options: a different VAE choice, say, would mix
# full-VAE and tiny-VAE graphs in one folder.
RESUME_KEYS = ("source_hash", "opset", "precision", "external_data_threshold", "vae")
OPSETS = range(17, 21)


def size_multiple(model_dir: Path) -> int:
    """Image sizes must be multiples of this: the VAE scale factor times the UNet's total downsampling."""
    unet = read_json(model_dir / "unet" / "config.json")
    info = model_info(model_dir)
    return info.vae_scale_factor * 2 ** (len(unet["block_out_channels"]) - 1)


def export_onnx(model, output, opset: int = 17, fp16: bool = False, device: str = "cpu", check: bool = True,
                external_data_threshold: int = optimize.EXTERNAL_DATA_THRESHOLD, progress=None, log=print,
                vae: str = "full") -> dict:
    """Export the four submodels of `model` into `output`; returns the manifest. `check` runs verification.
    `vae="tiny"` takes the VAE graphs from the model's vae_tiny/ (TAESD) instead of vae/."""
    if opset not in OPSETS:
        raise IcvError(f"opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1}")
    vae = parse_vae(vae) or "full"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IcvError(f"device {device}: no CUDA GPU visible to PyTorch (use --device cpu)")
    model_dir = resolve_model(model)
    check_diffusers_folder(model_dir)
    if vae == "tiny":
        check_tiny_vae_folder(model_dir)
    output = Path(output)
    info = model_info(model_dir)
    precision = "fp16" if fp16 else "fp32"
    # The SD VAE overflows in fp16 (force_upcast); TAESD does not (its config says force_upcast false).
    vae_cfg = read_json(model_dir / source_folder("vae_decoder", vae) / "config.json")
    keep_vae_fp32 = optimize.vae_keeps_fp32(vae_cfg)
    state = {
        "source_model": str(model), "source_hash": mf.source_hash(model_dir), "opset": opset,
        "precision": precision, "external_data_threshold": external_data_threshold, "vae": vae, "done": {},
    }
    state["done"] = mf.resume_export(output, state, STATE_NAME, RESUME_KEYS, "model.onnx", mf.FORMAT, "icv-export").get("done", {})
    mult = size_multiple(model_dir)
    specs = submodels(info)

    names = list(SUBMODEL_NAMES)
    bar = progress(names, desc="export") if progress else names
    for name in bar:
        if name in state["done"]:
            log(f"{name}: already exported, kept")
            continue
        sub_precision = "fp32" if (not fp16 or (name.startswith("vae") and keep_vae_fp32)) else "fp16"
        started = time.perf_counter()
        entry = _export_one(model_dir, output, specs[name], info, mult, opset, sub_precision, device, check,
                            external_data_threshold, vae)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        state["done"][name] = entry
        write_json(output / STATE_NAME, state)
        err = entry.get("max_rel_error")
        log(f"{name}: exported in {entry['seconds']} s" + (f", relative error {err:.2e}" if err is not None else ""))

    for folder in mf.COPIED_FOLDERS:
        _copy_tree(model_dir / folder, output / folder)
    for name in mf.COPIED_FILES:  # model_index.json, and the model's own settings (icv_config.json) where it has them
        if (model_dir / name).is_file():
            copy_file(model_dir / name, output / name)
        else:
            (output / name).unlink(missing_ok=True)  # not a stale one from an earlier export of another model
    manifest = {
        "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "opset": opset, "precision": precision,
        "io_dtype": mf.IO_DTYPE, "vae": vae, "source_model": str(model), "source_hash": state["source_hash"],
        "exporter": {"icv_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "method": "torch.onnx.export(dynamo=False)"},
        "model_info": info.__dict__, "image_size_multiple": mult, "submodels": {},
        "copied_files": [mf.plain_file_entry(output, output / name) for name in mf.COPIED_FILES if (output / name).is_file()],
    }
    io = mf.graph_io(info)
    for name in SUBMODEL_NAMES:
        graph = output / name / "model.onnx"
        manifest["submodels"][name] = {
            **mf.file_entry(output, graph),
            "precision": state["done"][name]["precision"],
            "inputs": io[name][0],
            "outputs": io[name][1],
            "max_rel_error": state["done"][name].get("max_rel_error"),
            "export_seconds": state["done"][name]["seconds"],
        }
    mf.write_manifest(output / mf.MANIFEST_NAME, manifest)
    (output / STATE_NAME).unlink(missing_ok=True)
    return manifest


def _export_one(model_dir, output, sub, info, mult, opset, precision, device, check, threshold, vae="full") -> dict:
    """Export, clean up, convert, save, check and verify one submodel; its folder appears only when complete."""
    final = output / sub.name
    work = output / f".{sub.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "raw").mkdir(parents=True)
    graph = work / "model.onnx"
    try:
        module = load_module(model_dir, sub.name, device, vae=vae)  # also the reference that verification compares with
        # Trace at a height that is NOT a multiple of the UNet's downsampling: diffusers then passes explicit
        # upsample sizes (taken from the skip connections' shapes), which the trace records as shape arithmetic,
        # so the graph is right for every size. (Traced at a multiple, it would bake in "upsample x2" and fail on
        # the latent sizes the pipeline makes from images whose sides are only multiples of the VAE factor.)
        f = info.vae_scale_factor
        example = sub.random_inputs(2, 2 * mult + f, 2 * mult, info, seed=1)
        raw = work / "raw" / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches; verification checks them
            torch.onnx.export(
                module, tuple(v.to(device) for v in example.values()), str(raw), dynamo=False,
                input_names=sub.input_names, output_names=sub.output_names, dynamic_axes=sub.dynamic_axes(),
                opset_version=opset, do_constant_folding=True,
            )
        # Verify at a shape the export never saw: another batch, non-square.
        batch = 3 if sub.name in ("unet", "text_encoder") else 2
        check_inputs = sub.random_inputs(batch, 3 * mult, 4 * mult + f, info, seed=2)
        reference = verify.torch_reference(module, check_inputs) if check else None
        del module
        gc.collect()

        big = sum(p.stat().st_size for p in raw.parent.iterdir()) > threshold
        if big:  # by path: shape inference in memory (and onnxslim) cannot hold graphs over 2 GB in one protobuf
            onnx.shape_inference.infer_shapes_path(str(raw), str(raw))
        model = onnx.load(str(raw))
        if not big:
            model = optimize.clean_up(model)  # constant folding, shape inference, dead-code elimination
        if precision == "fp16":
            model = optimize.to_fp16(model)
        optimize.save(model, graph, threshold)
        del model
        gc.collect()
        shutil.rmtree(work / "raw")
        onnx.checker.check_model(str(graph))  # by path: works with external data
        shutil.copyfile(model_dir / source_folder(sub.name, vae) / "config.json", work / "config.json")
        entry = {"precision": precision}
        if check:
            error = verify.relative_error(verify.onnx_output(graph, check_inputs), reference)
            entry["max_rel_error"] = error
            verify.check(sub.name, error, precision)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        return entry
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_tree(src: Path, dst: Path) -> None:
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)

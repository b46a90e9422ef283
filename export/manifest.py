"""Writing the manifest of an exported ONNX folder (docs/DESIGN.md 7); the check that refuses a folder is the runtime's.

`manifest.json` sits at the folder root and records, per submodel, the graph file (and its one external-data
file), its inputs and outputs (names, dtypes, shapes with symbolic batch/height/width), byte sizes and SHA-256
content hashes, plus the opset, the precision (fp32 / fp16 weights; I/O is float32 either way), the VAE the vae_*
graphs came from ("vae": "full" or "tiny"; absent in older folders means full), the source model
and the sizes the runtime needs (`model_info`). The reading side (format, `graph_io`, `check_onnx_folder`) lives in
`icv_deploy.backends.onnx_backend`, because the runtime must not import the exporter (docs/DESIGN.md 2); it is
re-exported here so exporter code and tests have one import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from icv_deploy.backends.onnx_backend import (  # noqa: F401  (re-exported)
    COPIED_FILES, COPIED_FOLDERS, FORMAT, FORMAT_VERSION, IO_DTYPE, MANIFEST_NAME, PRECISIONS, check_files, check_onnx_folder,
    folder_vae, graph_io, info_from_manifest, read_manifest, sha256_file,
)
from icv_deploy.errors import IcvError


def source_hash(model_dir: Path) -> str:
    """Hash of the source model's files: each file's name, size and SHA-256 of its whole content.

    Whole files, not samples: a re-trained checkpoint of the same size differs only inside its tensors, and an
    export resumed against it must start over rather than keep graphs of the old weights.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        digest.update(f"{rel}:{path.stat().st_size}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def file_entry(folder: Path, graph: Path) -> dict:
    """Path, size and hash of a submodel's graph and (if any) of its one external-data file, relative to `folder`."""
    data = graph.with_name(graph.name + "_data")
    entry = {"path": graph.relative_to(folder).as_posix(), "bytes": graph.stat().st_size,
             "sha256": sha256_file(graph), "external_data": None}
    if data.exists():
        entry["external_data"] = {"path": data.relative_to(folder).as_posix(), "bytes": data.stat().st_size,
                                  "sha256": sha256_file(data)}
    return entry


def plain_file_entry(folder: Path, path: Path) -> dict:
    """Path (relative to `folder`), size and SHA-256 of one file."""
    return {"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(path: Path, manifest: dict) -> None:
    """Atomic JSON write (icv_deploy.atomic gives it the usual permissions)."""
    from icv_deploy.atomic import write_json

    write_json(path, manifest)


def resume_export(output: Path, state: dict, state_name: str, same_keys, finished_file: str, fmt: str, tool: str) -> dict:
    """What an interrupted earlier export into `output` left to reuse: its state file's contents when its `same_keys`
    equal `state`'s, with `done` trimmed to the submodels whose `<name>/<finished_file>` exists; else {}.

    Refuses to write into a folder that is not an export of ours. A finished export of ours (a manifest of format
    `fmt`) loses its manifest first, so that a crash half-way never leaves old and new models looking complete."""
    if not output.exists():
        output.mkdir(parents=True)
        return {}
    if not output.is_dir():
        raise IcvError(f"output {output}: exists and is not a folder")
    if (output / state_name).exists():
        try:
            previous = json.loads((output / state_name).read_text())
        except ValueError:
            return {}  # a state file cut short: start over
        if not all(previous.get(k) == state.get(k) for k in same_keys):
            return {}
        done = {k: v for k, v in previous.get("done", {}).items() if (output / k / finished_file).exists()}
        return {**previous, "done": done}
    try:
        ours = json.loads((output / MANIFEST_NAME).read_text()).get("format") == fmt
    except (OSError, ValueError, AttributeError):
        ours = False
    if ours:
        (output / MANIFEST_NAME).unlink()
        return {}
    if not any(output.iterdir()):
        return {}
    raise IcvError(f"output {output}: folder exists, is not empty and is not an `{tool}` folder: choose another")

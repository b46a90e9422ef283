"""Training checkpoints: accelerate's `save_state`, written so that a crash never leaves a half checkpoint.

Every process writes into `checkpoints/.checkpoint-<step>.tmp`; when all are done the main process adds
`training_state.json`, flushes the files to disk and renames the folder to `checkpoints/checkpoint-<step>`.
Only folders with that exact name and a `training_state.json` count, so a run killed mid-write resumes from
the previous checkpoint. The last `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from icv_deploy.atomic import write_json
from icv_deploy.errors import IcvError

NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first, as (step, folder)."""
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            match = NAME.match(folder.name)
            if match and (folder / STATE_FILE).exists():
                found.append((int(match.group(1)), folder))
    return sorted(found)


def find_resume_checkpoint(root: Path, resume: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint (None when there is none yet); a path -> that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise IcvError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE}); use --resume latest "
                       f"or one of {root}/checkpoint-<step>")
    return path


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(accelerator, root: Path, step: int, state: dict, keep: int) -> Path:
    """Collective: every process must call it. Returns the final folder."""
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {**state, "step": step})
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final

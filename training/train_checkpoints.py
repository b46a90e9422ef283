"""Training checkpoints: accelerate's `save_state`, written so that a crash never leaves a half checkpoint.

Every process writes into `checkpoints/.checkpoint-<step>.tmp`; when all are done the main process adds
`training_state.json`, flushes the files to disk and renames the folder to `checkpoints/checkpoint-<step>`.
Only folders with that exact name and a `training_state.json` count, so a run killed mid-write resumes from
the previous checkpoint. The last `keep` checkpoints are kept.

Resuming unpickles nothing it does not need (docs/DESIGN.md 10): accelerate reads the model weights from safetensors
and the optimizer, scheduler and RNG states with `torch.load(weights_only=True)`; the moving averages (diffusers'
EMAModel) are saved here as `ema_<i>.safetensors` (shadow weights as tensors, the few numbers as metadata) instead of
accelerate's custom-object pickles, which accelerate would read with `weights_only=False`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from icv_deploy.atomic import fsync_tree, write_json, write_text
from icv_deploy.errors import IcvError

NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"
EMA_FILE = "ema_{}.safetensors"


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


def save_averages(averages, folder: Path) -> None:
    """Each EMAModel of `averages` (None entries skipped, positions kept) as `ema_<i>.safetensors`."""
    from safetensors.torch import save_file

    for i, ema in enumerate(averages):
        if ema is None:
            continue
        state = ema.state_dict()
        shadow = state.pop("shadow_params")
        tensors = {f"shadow.{k:06d}": p.detach().to("cpu").contiguous() for k, p in enumerate(shadow)}
        save_file(tensors, str(folder / EMA_FILE.format(i)), metadata={"ema_state": json.dumps(state)})


def load_averages(averages, folder: Path) -> None:
    """Restore what `save_averages` wrote into the same EMAModels; checkpoints from before it hold accelerate's
    `custom_checkpoint_<i>.pkl`, read with `weights_only=True` (an EMA state is numbers and tensors only)."""
    import torch
    from safetensors import safe_open

    for i, ema in enumerate(averages):
        if ema is None:
            continue
        path = folder / EMA_FILE.format(i)
        if path.exists():
            with safe_open(str(path), framework="pt") as fh:
                state = json.loads(fh.metadata()["ema_state"])
                state["shadow_params"] = [fh.get_tensor(name) for name in sorted(fh.keys())]
        elif (folder / f"custom_checkpoint_{i}.pkl").exists():
            state = torch.load(folder / f"custom_checkpoint_{i}.pkl", map_location="cpu", weights_only=True)
        else:
            raise IcvError(f"{folder}: no {EMA_FILE.format(i)} (moving average {i}): the checkpoint was written without it")
        ema.load_state_dict(state)


def load_checkpoint(accelerator, folder: Path, averages=(), log_file: Path | None = None) -> dict:
    """Resume from `folder`: accelerate's state, then the moving averages; returns training_state.json.

    The EMAs must not be registered with `accelerator.register_for_checkpointing` (accelerate would unpickle them
    with weights_only=False): pass them here and to `save_checkpoint`. `log_file` (losses.jsonl) loses the lines
    of steps after the checkpoint, which the resumed run logs again, so the log reads as an uninterrupted run's.
    """
    folder = Path(folder)
    legacy = sorted(folder.glob("custom_checkpoint_*.pkl"))
    if legacy:
        # Written by accelerate for registered EMAs (checkpoints from before ema_<i>.safetensors). accelerate would
        # unpickle them with weights_only=False (and refuses a folder whose count differs from the registered
        # objects'), so it is shown the folder without them; load_averages reads them with weights_only=True.
        with tempfile.TemporaryDirectory(prefix="icv-resume-") as view:
            for path in folder.iterdir():
                if path not in legacy:
                    os.symlink(path.resolve(), Path(view) / path.name)
            accelerator.load_state(view)
    else:
        accelerator.load_state(str(folder))
    load_averages(averages, folder)
    for ema in averages:
        if ema is not None:
            ema.to(accelerator.device)
    state = read_state(folder)
    if log_file is not None and accelerator.is_main_process:
        truncate_log(Path(log_file), state["step"])
    return state


def truncate_log(path: Path, step: int) -> None:
    """Keep the JSON lines of `path` whose "step" is at most `step` (and drop a torn last line); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


def save_checkpoint(accelerator, root: Path, step: int, state: dict, keep: int, averages=()) -> Path:
    """Collective: every process must call it. Returns the final folder. `averages`: the EMAModels (see
    load_checkpoint)."""
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_averages(averages, tmp)
        write_json(tmp / STATE_FILE, {**state, "step": step})
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final

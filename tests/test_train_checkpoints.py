"""Training checkpoints resume without unpickling anything they do not need (docs/DESIGN.md 10): model weights and moving
averages from safetensors, accelerate's optimizer, scheduler and RNG states with torch.load(weights_only=True)."""

from __future__ import annotations

import json

import torch

from icv_deploy.training.train_checkpoints import list_checkpoints, load_checkpoint, save_checkpoint


def fresh_run(seed: int):
    """An Accelerator with a small model, optimizer, schedule and EMA, from a clean accelerate state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers.training_utils import EMAModel

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    return accelerator, model, optimizer, schedule, EMAModel(model.parameters(), decay=0.9)


def train_steps(run, steps: int) -> None:
    accelerator, model, optimizer, schedule, ema = run
    for k in range(steps):
        loss = model(torch.full((2, 4), float(k + 1))).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        ema.step(model.parameters())


def test_resume_reads_weights_and_averages_from_safetensors_and_nothing_unsafe(tmp_path, monkeypatch):
    run = fresh_run(0)
    train_steps(run, 3)
    accelerator, model, optimizer, schedule, ema = run
    root = tmp_path / "checkpoints"
    save_checkpoint(accelerator, root, 3, {"updates_per_epoch": 4}, keep=2, averages=[ema, None])
    (step, folder), = list_checkpoints(root)
    assert step == 3 and (folder / "model.safetensors").exists() and (folder / "ema_0.safetensors").exists()
    assert not list(folder.glob("custom_checkpoint_*")) and not list(root.glob(".*"))

    log = tmp_path / "losses.jsonl"  # the killed run had logged steps 4 and 5 past its checkpoint, the last line torn
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = fresh_run(1)  # other initial weights: everything below must come from the checkpoint
    state = load_checkpoint(resumed[0], folder, averages=[resumed[4], None], log_file=log)
    assert state == {"updates_per_epoch": 4, "step": 3}
    assert loads and all(w is True for w in loads)  # optimizer, schedule, RNG: weights_only; the rest safetensors

    _, model2, optimizer2, schedule2, ema2 = resumed
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ema.shadow_params, ema2.shadow_params):
        assert torch.equal(a, b)
    assert ema2.optimization_step == ema.optimization_step == 3 and ema2.decay == ema.decay
    assert schedule2.state_dict() == schedule.state_dict()
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]

    # The resumed run goes on exactly as the original would have.
    train_steps(run, 2)
    train_steps(resumed, 2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_checkpoints_written_before_the_safetensors_ema_still_resume_with_weights_only(tmp_path, monkeypatch):
    run = fresh_run(0)
    accelerator, model, optimizer, schedule, ema = run
    accelerator.register_for_checkpointing(ema)  # how checkpoints used to hold the EMA: accelerate's pickle
    train_steps(run, 2)
    save_checkpoint(accelerator, tmp_path, 2, {}, keep=1)
    folder = tmp_path / "checkpoint-2"
    assert (folder / "custom_checkpoint_0.pkl").exists()

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    resumed = fresh_run(1)
    load_checkpoint(resumed[0], folder, averages=[resumed[4]])
    assert loads and all(w is True for w in loads)
    for a, b in zip(ema.shadow_params, resumed[4].shadow_params):
        assert torch.equal(a, b)

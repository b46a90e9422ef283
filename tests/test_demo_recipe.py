"""training/demo_recipe.py's one-pass stages without their hours of training: which configs run, in which order,
each from the model the stage before made, and that the shipped configs are valid for the objective they name
(the checks `icv-train` makes before its first step). Training itself is covered by test_train_one_pass."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """train() recorded instead of run: (config, base_model, output) per call; each 'trains' OUTPUT/model."""
    from icv_deploy.training import demo_recipe, train as train_module

    calls = []

    def fake_train(cfg, resume=None):
        calls.append((Path(cfg.output).name, cfg.base_model, cfg.max_steps))
        return SimpleNamespace(model_dir=Path(cfg.output) / "model")

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(demo_recipe, "prepare_data", lambda work: work)  # the data stage is icv-data's, tested there
    installed = []
    monkeypatch.setattr(demo_recipe, "install", lambda model, name, extra: installed.append((model, name, extra)) or model)
    return calls, installed


def test_one_step_only_runs_stages_8_and_9_each_from_the_last(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--one-step-only"])
    assert result.exit_code == 0, result.output
    assert calls == [("one-step", "demo", 1200), ("one-step-masks", str(tmp_path / "one-step" / "model"), 800)]
    assert installed == []  # no --install, nothing replaced


def test_stage_9_alone_starts_from_the_bundled_one_pass_model_and_installs_it(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "9", "--install"])
    assert result.exit_code == 0, result.output
    assert calls == [("one-step-masks", "demo-1step", 800)]
    [(model, name, extra)] = installed
    assert model == tmp_path / "one-step-masks" / "model" and name == "demo-1step"
    assert "--stage 9" in extra["trained_with"]


@pytest.mark.parametrize("name", ["demo-1step", "demo-1step-masks"])
def test_shipped_one_pass_configs_pass_icv_trains_checks(name):
    from icv_deploy.training.config import load_config
    from icv_deploy.training.train import objective_settings

    cfg = load_config(name)
    scheduler = {"num_train_timesteps": 1000, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    mode, decoded = objective_settings(cfg, scheduler)
    assert mode.timestep == 999 and decoded.weight > 0
    assert (decoded.mask_weight > 0) == (name == "demo-1step-masks")

"""training/demo_recipe.py's stages without their hours of training: which configs run, in which order,
each from the model the stage before made, and that the shipped configs are valid for the objective they name
(the checks `icv-train` makes before its first step). Training itself is covered by test_train_one_pass."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner


class Calls(list):
    def __init__(self):
        super().__init__()
        self.data = {}


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """train() recorded instead of run: (output, base_model, max_steps) per call, and calls.data: the data folder's
    name per output; each 'trains' OUTPUT/model."""
    from icv_deploy.training import build as build_module, demo_recipe, train as train_module

    calls = Calls()

    def fake_train(cfg, resume=None):
        calls.append((Path(cfg.output).name, cfg.base_model, cfg.max_steps))
        calls.data[Path(cfg.output).name] = Path(cfg.data).name
        return SimpleNamespace(model_dir=Path(cfg.output) / "model")

    def fake_build(sources, out, **options):  # stage 10's datasets: the options recorded as a call of their own
        calls.append((Path(out).name, sources, options["tasks"], options["yes_radius"], options["colors"]))

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(build_module, "build", fake_build)
    monkeypatch.setattr(demo_recipe, "prepare_data", lambda work: work)  # the data stage is icv-data's, tested there
    installed = []
    monkeypatch.setattr(demo_recipe, "install", lambda model, name, extra: installed.append((model, name, extra)) or model)
    return calls, installed


@pytest.fixture
def autoencoder_stages(monkeypatch):
    """The autoencoder stages recorded instead of run (tested in test_train_autoencoder)."""
    from icv_deploy.training import train_autoencoder as module

    calls = []
    monkeypatch.setattr(module, "load_autoencoder_config", lambda name, values: (name, values))
    monkeypatch.setattr(module, "train_autoencoder",
                        lambda cfg, resume=None: calls.append(cfg[0]) or Path(cfg[1]["output"]) / "model")
    return calls


def test_whole_recipe_runs_every_stage_in_order_each_from_the_last(trained, autoencoder_stages, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--one-step", "--install"])
    assert result.exit_code == 0, result.output
    assert autoencoder_stages == ["demo-vae", "demo-vae-decoder", "demo-vae-outlines", "demo-vae-boxes"]
    assert [(output, base) for output, base, _ in calls] == [
        ("unet", "random"), ("masks", str(tmp_path / "unet" / "model")), ("answers", str(tmp_path / "masks" / "model")),
        ("phrasings", str(tmp_path / "answers" / "model")), ("wide-outlines", str(tmp_path / "phrasings" / "model")),
        ("one-step", str(tmp_path / "wide-outlines" / "model")),
        ("one-step-masks", str(tmp_path / "one-step" / "model")),
        ("one-step-wide-outlines", str(tmp_path / "one-step-masks" / "model")),
        ("one-step-wide-outlines-2", str(tmp_path / "one-step-wide-outlines" / "model")),
        ("one-step-phrasings", str(tmp_path / "one-step-wide-outlines-2" / "model"))]
    # the last runs of each stage train on the 3 px outlines of WORK/data-wide, the others on WORK/data
    assert {run for run, data in calls.data.items() if data == "data-wide"} == {
        "wide-outlines", "one-step-wide-outlines", "one-step-wide-outlines-2", "one-step-phrasings"}
    assert set(calls.data.values()) == {"data", "data-wide"}
    # the sampled model is installed after its stage 7 (masks, answers, phrasings, wide outlines), the one-pass model
    # after its own
    assert [(model, name) for model, name, _ in installed] == [
        (tmp_path / "wide-outlines" / "model", "demo"), (tmp_path / "one-step-phrasings" / "model", "demo-1step")]


def yes_no_calls(work: Path, base) -> list[tuple]:
    """Stage 10 from `base` (a model folder or bundled name): per radius, the classification examples built with it
    and a run on them from the phase before; then every task on the recipe's data."""
    calls, model = [], str(base / "model") if isinstance(base, Path) else base
    for radius, steps in ((0, 120), (8, 100), (24, 100), (56, 100), (96, 100), (None, 150)):
        name = "card" if radius is None else radius
        calls += [(f"yes-no-data-r{name}", [f"synth:{work / 'synth'}"], ["classification"], radius, ("blue", "black")),
                  (f"yes-no-r{name}", model, steps)]
        model = str(work / f"yes-no-r{name}" / "model")
    return calls + [("yes-no-card", model, 300)]


def test_mask_stage_reuses_the_unet_stages_latents_and_keeps_its_own(trained, autoencoder_stages, tmp_path):
    from icv_deploy.training.demo_recipe import main

    (tmp_path / "unet" / "latent-cache").mkdir(parents=True)
    (tmp_path / "unet" / "latent-cache" / "latents.safetensors").write_bytes(b"stage 6")
    assert CliRunner().invoke(main, ["--work", str(tmp_path)]).exit_code == 0
    stage_6 = tmp_path / "unet" / "latent-cache" / "latents.safetensors"
    copied = tmp_path / "masks" / "latent-cache" / "latents.safetensors"
    assert copied.read_bytes() == b"stage 6"
    assert copied.stat().st_ino == stage_6.stat().st_ino  # one file on disk, not a second 800 MB
    # the answers and phrasings runs train on the same latents, the wide-outlines run (other targets) on its own
    for run in ("answers", "phrasings"):
        assert (tmp_path / run / "latent-cache" / "latents.safetensors").stat().st_ino == stage_6.stat().st_ino
    assert not (tmp_path / "wide-outlines" / "latent-cache").exists()
    rebuilt = copied.with_suffix(".new")  # e.g. rebuilt because the key did not match: replaced whole, as
    rebuilt.write_bytes(b"stage 7's own")  # load_or_build_cache writes it; a rerun keeps it
    os.replace(rebuilt, copied)
    assert CliRunner().invoke(main, ["--work", str(tmp_path)]).exit_code == 0
    assert copied.read_bytes() == b"stage 7's own" and stage_6.read_bytes() == b"stage 6"
    assert not list((tmp_path / "masks" / "latent-cache").glob("*.tmp"))


def test_one_pass_runs_on_the_same_data_share_their_latents(trained, tmp_path, monkeypatch):
    """Stage 9's runs on WORK/data-wide encode its latents once: each links the cache of the run before on the same
    data, while the first run on new data (other targets) encodes its own."""
    from icv_deploy.training import train as train_module
    from icv_deploy.training.demo_recipe import main

    calls, _ = trained
    record = train_module.train

    def train_and_cache(cfg, resume=None):  # as icv-train does: a run without a cache encodes one
        cache = Path(cfg.output) / "latent-cache" / "latents.safetensors"
        if not cache.exists():
            cache.parent.mkdir(parents=True)
            cache.write_bytes(f"{Path(cfg.output).name} on {Path(cfg.data).name}".encode())
        return record(cfg, resume)

    monkeypatch.setattr(train_module, "train", train_and_cache)
    assert CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "9"]).exit_code == 0
    caches = {run: (tmp_path / run / "latent-cache" / "latents.safetensors").read_bytes() for run, _, _ in calls}
    assert caches == {"one-step-masks": b"one-step-masks on data",
                      "one-step-wide-outlines": b"one-step-wide-outlines on data-wide",
                      "one-step-wide-outlines-2": b"one-step-wide-outlines on data-wide",
                      "one-step-phrasings": b"one-step-wide-outlines on data-wide"}


def test_stage_7_alone_starts_from_the_bundled_demo_and_installs_it(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "7", "--install"])
    assert result.exit_code == 0, result.output
    assert calls == [("masks", "demo", 800), ("answers", str(tmp_path / "masks" / "model"), 300),
                     ("phrasings", str(tmp_path / "answers" / "model"), 300),
                     ("wide-outlines", str(tmp_path / "phrasings" / "model"), 600)]
    [(model, name, extra)] = installed
    assert model == tmp_path / "wide-outlines" / "model" and name == "demo"
    assert "--stage 7" in extra["trained_with"]


def test_a_single_stage_can_start_from_another_model(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "7", "--base", "old/stage6", "--install"])
    assert result.exit_code == 0, result.output
    assert calls[:2] == [("masks", "old/stage6", 800), ("answers", str(tmp_path / "masks" / "model"), 300)]
    assert "--stage 7 (on old/stage6)" in installed[0][2]["trained_with"]
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--base", "old/stage6"])
    assert result.exit_code == 2 and result.output.startswith("error: --base goes with --stage")


def test_one_step_only_runs_stages_8_and_9_each_from_the_last(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--one-step-only"])
    assert result.exit_code == 0, result.output
    assert calls == [("one-step", "demo", 1200), ("one-step-masks", str(tmp_path / "one-step" / "model"), 800),
                     ("one-step-wide-outlines", str(tmp_path / "one-step-masks" / "model"), 800),
                     ("one-step-wide-outlines-2", str(tmp_path / "one-step-wide-outlines" / "model"), 400),
                     ("one-step-phrasings", str(tmp_path / "one-step-wide-outlines-2" / "model"), 600)]
    assert installed == []  # no --install, nothing replaced


def test_the_yes_no_experiment_runs_only_when_asked_from_the_bundled_one_pass_model(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "10", "--install"])
    assert result.exit_code == 0, result.output
    assert calls == yes_no_calls(tmp_path, "demo-1step")
    [(model, name, extra)] = installed
    assert model == tmp_path / "yes-no-card" / "model" and name == "demo-1step"
    assert "--stage 10" in extra["trained_with"]


def test_stage_9_alone_starts_from_the_bundled_one_pass_model_and_installs_it(trained, tmp_path):
    from icv_deploy.training.demo_recipe import main

    calls, installed = trained
    result = CliRunner().invoke(main, ["--work", str(tmp_path), "--stage", "9", "--install"])
    assert result.exit_code == 0, result.output
    assert calls == [("one-step-masks", "demo-1step", 800),
                     ("one-step-wide-outlines", str(tmp_path / "one-step-masks" / "model"), 800),
                     ("one-step-wide-outlines-2", str(tmp_path / "one-step-wide-outlines" / "model"), 400),
                     ("one-step-phrasings", str(tmp_path / "one-step-wide-outlines-2" / "model"), 600)]
    [(model, name, extra)] = installed
    assert model == tmp_path / "one-step-phrasings" / "model" and name == "demo-1step"
    assert "--stage 9" in extra["trained_with"]


@pytest.mark.parametrize("name", ["demo-1step", "demo-1step-masks", "demo-1step-wide-outlines", "demo-1step-wide-outlines-2",
                                  "demo-1step-phrasings", "demo-1step-yes-no", "demo-1step-yes-no-card"])
def test_shipped_one_pass_configs_pass_icv_trains_checks(name):
    from icv_deploy.training.config import load_config
    from icv_deploy.training.objectives import objective_settings

    cfg = load_config(name)
    scheduler = {"num_train_timesteps": 1000, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    mode, decoded = objective_settings(cfg, scheduler)
    assert mode.timestep == 999 and decoded.weight > 0
    on_wide_outlines = "wide" in name or name == "demo-1step-phrasings"
    assert (decoded.mask_weight > 0) == (name in ("demo-1step-masks", "demo-1step-yes-no-card") or on_wide_outlines)
    assert (decoded.box_weight > 0) == on_wide_outlines  # the outline term only where the outlines are 3 px
    assert bool(cfg.rephrase) == (name == "demo-1step-phrasings")
    assert decoded.color_weight == 0  # the curriculum's grown answers are not one colour; the card phase keeps it off


@pytest.mark.parametrize("name", ["demo-masks", "demo-answers", "demo-phrasings", "demo-wide-outlines"])
def test_shipped_mask_stage_configs_keep_the_demos_sampler_and_train_only_their_decoded_terms(name):
    from icv_deploy.training.config import load_config
    from icv_deploy.training.objectives import objective_settings

    cfg, demo = load_config(name), load_config("demo")
    mode, decoded = objective_settings(cfg, {"num_train_timesteps": 1000, "prediction_type": "v_prediction"})
    assert mode is None and cfg.objective == "instruct_pix2pix"  # still the sampled model
    assert decoded.active and decoded.mask_weight > 0 and decoded.weight == 0
    assert (decoded.color_weight > 0) == (name != "demo-masks")
    assert bool(cfg.rephrase) == (name in ("demo-phrasings", "demo-wide-outlines"))
    assert cfg.scene_recognition == demo.scene_recognition  # stage 6's recognition terms kept
    assert cfg.cache_latents and cfg.resolution == demo.resolution
    assert cfg.runtime == demo.runtime  # its icv_config.json keeps the default setting the model card measures


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),   # AMD EPYC (Zen 4) with AVX-512 BF16
    ("fpu avx2 avx512f amx_bf16 amx_tile amx_int8", True),    # Intel Sapphire Rapids
    ("fpu sse avx2 fma avx512f avx512bw", False),             # AVX-512 without BF16: emulated, slower
    ("fpu sse avx2 fma", False),
])
def test_bf16_training_only_where_the_cpu_computes_it_natively(tmp_path, flags, native):
    from icv_deploy.training.demo_recipe import cpu_has_native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "absent") is False

"""Model folders and hub ids: found, checked, and refused with one clear line (docs/DESIGN.md 3, 10)."""

from __future__ import annotations

import pytest

from icv_deploy.backends.torch_backend import model_info
from icv_deploy.errors import ModelFilesError
from icv_deploy.model_files import check_diffusers_folder, resolve_model


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesError) as err:
        resolve_model("alaa-lab/InstructCV")
    assert "not in the hub cache (HF_HUB_OFFLINE is set" in str(err.value) and "\n" not in str(err.value)


def test_a_typo_in_a_local_path_never_asks_the_hub(tmp_path, monkeypatch):
    """`models/tiny-randm` whose `models/` exists here is a missing folder, answered at once with the close name."""
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    (tmp_path / "models" / "tiny-random").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFilesError, match=r"models/tiny-randm: no such folder \(did you mean models/tiny-random\?\)"):
        resolve_model("models/tiny-randm")


def test_paths_that_are_not_folders(tmp_path):
    with pytest.raises(ModelFilesError, match="no such folder"):
        resolve_model(tmp_path / "a" / "b" / "c")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelFilesError, match="not a folder"):
        resolve_model(tmp_path / "f.txt")


def test_tiny_model_folder_is_valid_and_reports_its_scale_factor(tiny_model, tiny_model_f4):
    check_diffusers_folder(tiny_model)
    assert model_info(tiny_model).vae_scale_factor == 2
    assert model_info(tiny_model_f4).vae_scale_factor == 4
    assert model_info(tiny_model).unet_in_channels == 8


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelFilesError, match="model_index.json"):
        check_diffusers_folder(tmp_path)


@pytest.mark.parametrize("value", [0.5, "3px", -1])
def test_a_bad_box_line_fraction_is_refused_when_loading(tiny_model, tmp_path, value):
    """icv_config.json box_line_fraction (the width of the outlines the model paints) is checked at load time, not
    when the first detection answer is read."""
    import json
    import shutil

    import icv_deploy
    from icv_deploy.model_files import model_config

    folder = shutil.copytree(tiny_model, tmp_path / "m")
    (folder / "icv_config.json").write_text(json.dumps({**model_config(tiny_model), "box_line_fraction": value}))
    with pytest.raises(ModelFilesError, match=f"icv_config.json: box_line_fraction must be a number in .*{value!r}"):
        icv_deploy.load(folder)

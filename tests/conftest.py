"""Shared fixtures: random-weight models built from configs (no model hub), small images."""

from __future__ import annotations

import numpy as np
import pytest

# The longest test files, longest first (`--durations`, 2-core AMD EPYC, 2026-12-01). pytest-xdist hands each worker
# a whole file at a time in collection order; starting these first keeps a long file from running alone at the end.
LONGEST_FIRST = ("test_crash_resume.py", "test_export_full.py", "test_demo_model.py", "test_serve.py",
                 "test_train_run.py", "test_bench.py", "test_openvino.py", "test_export_carries.py",
                 "test_scene_recognition.py", "test_cli_infer.py", "test_one_pass.py", "test_onnx_backend.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random 8-channel model whose VAE scale factor is 2 (not 8)."""
    from icv_deploy.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0, vae_levels=2)


@pytest.fixture(scope="session")
def tiny_model_f4(tmp_path_factory):
    """The same, with a VAE scale factor of 4."""
    from icv_deploy.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-f4", seed=1, vae_levels=3)


@pytest.fixture(scope="session")
def taesd_model(tmp_path_factory):
    """A tiny random model (VAE scale factor 4) with a random tiny VAE of the same scale factor in vae_tiny/."""
    from icv_deploy.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-taesd", seed=2, vae_levels=3, tiny_vae=True)


@pytest.fixture(scope="session")
def onnx_taesd(taesd_model, tmp_path_factory):
    from icv_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny-taesd"
    export_onnx(taesd_model, out, vae="tiny", log=lambda *_: None)
    return out


@pytest.fixture
def scene_image():
    """A non-square 60x84 RGB image with some structure (sky, ground, an object)."""
    rng = np.random.default_rng(7)
    img = np.zeros((60, 84, 3), np.uint8)
    img[:25] = (120, 170, 230)
    img[25:] = (90, 140, 60)
    img[30:50, 20:45] = (200, 40, 40)
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def demo_assets(tmp_path, monkeypatch, tiny_model):
    """A stand-in for icv_deploy/assets/: `demo` is the tiny random model, `demo-1step` is not shipped; no $ICV_MODEL."""
    from icv_deploy import model_files

    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "demo").symlink_to(tiny_model, target_is_directory=True)
    monkeypatch.setattr(model_files, "BUNDLED_DIR", folder)
    monkeypatch.delenv("ICV_MODEL", raising=False)
    return folder


@pytest.fixture
def interrupt_onnx_export_at(monkeypatch):
    """interrupt_onnx_export_at(name): `icv-export onnx` is interrupted (KeyboardInterrupt) when it reaches submodel
    `name`; call it with None to let exports run again."""
    from icv_deploy.export import onnx_export

    real = onnx_export._export_one

    def interrupt_at(name):
        def export_one(model_dir, output, sub, *args):
            if sub.name == name:
                raise KeyboardInterrupt
            return real(model_dir, output, sub, *args)

        monkeypatch.setattr(onnx_export, "_export_one", real if name is None else export_one)

    return interrupt_at


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

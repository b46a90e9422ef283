"""`icv-data build` and `icv-data grid`: the datasets folder, balance, targets, resume after a crash."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS, TASKS, encode_depth
from icv_deploy.training.build import COLUMNS, BuildInterrupted, build
from icv_deploy.training.cli import main as icv_data
from icv_deploy.training.datasets import open_source
from icv_deploy.training.synthetic import write_scenes

from test_data_adapters import pets_root  # noqa: F401  (fixture: Oxford-IIIT Pets in its real format)

HAVE_ROUTING = importlib.util.find_spec("icv_deploy.tasks.routing") is not None


@pytest.fixture(scope="module")
def synth20(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("synth") / "s", num=20, seed=5, size=64, progress=False)


def test_cli_synth_build_grid_on_200_scenes(tmp_path):
    import datasets

    runner = CliRunner()
    result = runner.invoke(icv_data, ["synth", "--out", str(tmp_path / "s"), "--num", "200", "--seed", "0", "--size", "64"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(icv_data, ["build", "--source", f"synth:{tmp_path / 's'}", "--out", str(tmp_path / "ds"),
                                      "--prompts", "rephrased", "--size", "64", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "synth" in result.output and "segmentation" in result.output  # the summary table
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert tuple(ds.column_names) == COLUMNS
    counts = {t: ds["task"].count(t) for t in TASKS}
    assert set(counts.values()) == {200}  # balanced: as many as the smallest task (depth: one per scene)
    assert len(set(ds["edit_prompt"])) > 40  # rephrased: many different instructions
    adapter = open_source("synth", tmp_path / "s")
    refs = {(r.image_id, r.task, r.category): r for r in adapter.index()}
    for row in ds.select(range(60)):
        image, target = np.asarray(row["input_image"]), np.asarray(row["edited_image"])
        assert image.shape == target.shape == (64, 64, 3)
        if row["task"] == "segmentation":
            assert set(np.unique(target)) <= {0, 255} and (target == 255).any()
        elif row["task"] == "depth":
            example = adapter.load(refs[(row["image_id"], "depth", None)])
            assert np.array_equal(target, encode_depth(example.depth))
        elif row["task"] == "detection":
            assert np.all(target == COLORS["blue"], axis=-1).any()
        else:
            assert (target == target[0, 0]).all() and tuple(target[0, 0]) in COLORS.values()
        if HAVE_ROUTING:
            from icv_deploy.tasks.routing import route

            r = route(row["edit_prompt"])
            assert r.task == row["task"]
            if row["task"] != "depth":
                assert r.category == row["category"]
            if row["task"] == "classification":
                example = adapter.load(refs[(row["image_id"], "classification", row["category"])])
                wanted = r.color_if_present if example.present else r.color_if_absent
                assert tuple(target[0, 0]) == COLORS[wanted]
    result = runner.invoke(icv_data, ["grid", str(tmp_path / "ds"), "--out", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    from icv_deploy.training.grid import as_array

    grid = as_array(tmp_path / "grid.png")
    assert grid.shape[0] > 4 * 128 and grid.std() > 20


def _rows(ds):
    return [tuple(row[c] if not c.endswith("image") else row[c].tobytes() for c in COLUMNS) for row in ds]


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, synth20):
    options = dict(sources=[f"synth:{synth20}"], prompts="rephrased", size=48, seed=3, shard_size=10, progress=False)
    reference = build(out=tmp_path / "whole", **options)
    with pytest.raises(BuildInterrupted):
        build(out=tmp_path / "resumed", stop_after_shards=2, **options)
    work = tmp_path / "resumed.work"
    assert len(list((work / "shards").iterdir())) == 2 and not (tmp_path / "resumed").exists()
    with pytest.raises(IcvError, match="other options"):
        build(out=tmp_path / "resumed", **{**options, "seed": 4})
    resumed = build(out=tmp_path / "resumed", **options)
    assert not work.exists()
    assert len(resumed) == len(reference) > 20
    assert _rows(resumed) == _rows(reference)
    # a finished build asked for again with the same options is kept as it is; with other options, refused
    stamp = (tmp_path / "resumed" / "icv_build.json").stat().st_mtime_ns
    assert _rows(build(out=tmp_path / "resumed", **options)) == _rows(reference)
    assert (tmp_path / "resumed" / "icv_build.json").stat().st_mtime_ns == stamp
    with pytest.raises(IcvError, match="--overwrite"):
        build(out=tmp_path / "resumed", **{**options, "seed": 4})
    parallel = build(out=tmp_path / "parallel", workers=2, **options)  # shards written by two processes
    assert _rows(parallel) == _rows(reference)


def test_box_width_paints_wider_outlines_and_is_recorded(tmp_path, synth20):
    """--box-width: the same rows, each detection target's blue outline that many pixels wide (a superset of the
    default 1 px one), and the width recorded as a fraction of the size for the models trained on it."""
    import json

    options = dict(prompts="fixed", size=64, seed=2, tasks=["detection"], progress=False)
    thin = build([f"synth:{synth20}"], tmp_path / "thin", **options)
    wide = build([f"synth:{synth20}"], tmp_path / "wide", box_width=3, **options)
    assert thin["edit_prompt"] == wide["edit_prompt"] and len(wide) > 10
    blue, counts = np.array(COLORS["blue"]), np.zeros(2)
    for a, b in zip(thin, wide):
        assert np.array_equal(np.asarray(a["input_image"]), np.asarray(b["input_image"]))
        thin_blue = np.all(np.asarray(a["edited_image"]) == blue, axis=-1)
        wide_blue = np.all(np.asarray(b["edited_image"]) == blue, axis=-1)
        assert thin_blue.any() and not (thin_blue & ~wide_blue).any()
        counts += thin_blue.sum(), wide_blue.sum()
    assert 2.2 * counts[0] < counts[1] <= 3 * counts[0]  # under 3x: the outlines of small boxes fill them
    recorded = json.loads((tmp_path / "wide" / "icv_build.json").read_text())["options"]
    assert recorded["box_line_fraction"] == 3 / 64
    assert "box_line_fraction" not in json.loads((tmp_path / "thin" / "icv_build.json").read_text())["options"]


@pytest.mark.parametrize("args, words", [(["--size", "0", "--box-width", "3"], "needs --size"),
                                         (["--size", "64", "--box-width", "7"], "not 7 at size 64"),
                                         (["--size", "64", "--box-width", "0"], "not 0")])
def test_box_width_bad_values_are_one_line_errors(tmp_path, synth20, args, words):
    result = CliRunner().invoke(icv_data, ["build", "--source", f"synth:{synth20}", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and words in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "o").exists()


def test_balance_across_sources_and_cap(tmp_path, synth20, pets_root):  # noqa: F811
    pets, _ = pets_root
    sources = [f"synth:{synth20}", f"pets:{pets}"]
    ds = build(sources, tmp_path / "a", size=32, progress=False)
    counts = {t: ds["task"].count(t) for t in TASKS}
    assert len(set(counts.values())) == 1  # every task as large as the smallest (synth depth: 20)
    by_source = {(s, t) for s, t in zip(ds["source"], ds["task"])}
    assert ("pets", "classification") in by_source and ("synth", "classification") in by_source
    capped = build(sources, tmp_path / "b", size=32, max_per_source=4, balance=False, progress=False)
    assert capped["source"].count("pets") == 4 and capped["source"].count("synth") == 4
    fixed = build([f"synth:{synth20}"], tmp_path / "c", size=32, tasks=["depth"], progress=False)
    assert set(fixed["edit_prompt"]) == {"Create a monocular depth map."} and set(fixed["category"]) == {None}


def test_build_bad_source_is_one_line_error(tmp_path):
    result = CliRunner().invoke(icv_data, ["build", "--source", "lidar:/x", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "KIND:ROOT" in result.output
    result = CliRunner().invoke(icv_data, ["build", "--source", f"pets:{tmp_path / 'nope'}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output

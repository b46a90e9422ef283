"""Prompt templates, the shipped paraphrase pool, routing of every instruction, and the T5 paraphrasing path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from icv_deploy.errors import IcvError
from icv_deploy.tasks.encodings import COLORS, TASKS
from icv_deploy.training.cli import main as icv_data
from icv_deploy.training.datasets.ade20k import CLASS_NAMES as ADE_CLASSES
from icv_deploy.training.paraphrase import MARKERS, extend_pool, load_t5_generator, to_template
from icv_deploy.training.prompts import POOL_FILES, TEMPLATES, choose_prompt, fill, load_pool
from icv_deploy.training.synthetic import CATEGORIES as SYNTH_CATEGORIES

# Categories the adapters produce: synth, Pets breeds (both spellings), COCO names, ADE20K names.
# ADE20K's "box" is left out: the router reads "box" as a detection word (reported to the routing owner).
CATEGORIES = sorted({*SYNTH_CATEGORIES, "Abyssinian", "american pit bull terrier", "Egyptian Mau", "beagle",
                     "traffic light", "teddy bear", "hot dog", "dining table", "cell phone", "apple",
                     *(c for c in ADE_CLASSES if c != "box")})


def test_pool_is_shipped_and_large_enough():
    pool = load_pool()
    assert set(pool) == set(TASKS)
    for task, templates in pool.items():
        assert len(templates) >= 15 and len(set(templates)) == len(templates)
    assert "project" in json.loads((load_pool.__globals__["POOL_FILE"]).read_text())["_about"]


@pytest.mark.parametrize("mode", POOL_FILES)
def test_every_template_and_pool_entry_routes_to_its_task_category_and_colours(mode):
    """The training pool and the evaluation-only ones (unseen.json, blind.json): icv-eval decodes an answer by the
    route of its instruction, so an evaluation instruction the router misreads would score the model wrongly."""
    from icv_deploy.tasks.routing import route

    pool = load_pool(POOL_FILES[mode])
    failures = []
    for task in TASKS:
        for template in dict.fromkeys([TEMPLATES[task], *pool[task]]):
            for category in (CATEGORIES if task != "depth" else [None]):
                instruction = fill(template, category, "red", "green")
                try:
                    r = route(instruction)
                    ok = r.task == task and (task == "depth" or r.category == category) and (
                        task != "classification" or (r.color_if_present, r.color_if_absent) == ("red", "green"))
                except Exception:  # an InstructionError is a failure too
                    ok = False
                if not ok:
                    failures.append(instruction)
    assert not failures, f"{len(failures)} instructions route wrongly, e.g. {failures[:5]}"


def test_choose_prompt_fixed_and_rephrased():
    rng = np.random.default_rng(0)
    assert choose_prompt("segmentation", "cat", rng)[0] == "Segment the cat."
    assert choose_prompt("depth", None, rng)[0] == "Create a monocular depth map."
    text, c1, c2 = choose_prompt("classification", "cat", rng)
    assert text == f"Show {c1} if the picture has cat, otherwise show {c2}."
    assert c1 in COLORS and c2 in COLORS and COLORS[c1] != COLORS[c2]
    seen = {choose_prompt("detection", "dog", rng, "rephrased")[0] for _ in range(200)}
    assert len(seen) > 10 and all("dog" in s for s in seen)
    pool = {s.format(category="dog") for s in load_pool()["detection"]}
    for mode in ("unseen", "blind"):  # evaluation only: never a training pool sentence
        drawn = {choose_prompt("detection", "dog", rng, mode)[0] for _ in range(100)}
        assert drawn == {s.format(category="dog") for s in load_pool(POOL_FILES[mode])["detection"]}
        assert not drawn & pool
    assert fill("Is there a {category}?", "apple") == "Is there an apple?"
    with pytest.raises(IcvError, match="fixed, rephrased, unseen, blind"):
        choose_prompt("depth", None, rng, "creative")


def test_bad_pool_file_names_it(tmp_path):
    bad = tmp_path / "pool.json"
    bad.write_text(json.dumps({t: ["Segment the {category}."] for t in TASKS}))
    with pytest.raises(IcvError, match="pool.json: depth prompt"):
        load_pool(bad)
    bad.write_text("{")
    with pytest.raises(IcvError, match="corrupt prompt pool file: .*pool.json"):
        load_pool(bad)


def test_extend_pool_keeps_only_valid_new_paraphrases():
    def fake_generate(texts, n):
        out = []
        for text in texts:
            if MARKERS["category"] in text and MARKERS["color1"] not in text:
                out.append([f"Please segment the {MARKERS['category']} now.", "Segment it.", text] if "egment" in text
                           else [f"Detect every {MARKERS['category']} here.", "Paint it blue."])
            elif MARKERS["color1"] in text:
                out.append([f"Display {MARKERS['color1']} if the image contains a {MARKERS['category']}, "
                            f"else display {MARKERS['color2']} please.", f"Show {MARKERS['color1']}."])
            else:
                out.append(["Produce the depth map of this picture.", f"Segment the {MARKERS['category']}."])
        return out

    pool = {t: [TEMPLATES[t]] for t in TASKS}
    new_pool, added = extend_pool(pool, fake_generate, per_template=3, check_routing=False)
    assert "Please segment the {category} now." in new_pool["segmentation"]
    assert "Segment it." not in new_pool["segmentation"]  # lost its placeholder
    assert "Segment the {category}." not in new_pool["depth"]  # a category in a depth prompt
    assert "Produce the depth map of this picture." in new_pool["depth"]
    assert new_pool["segmentation"].count("Segment the {category}.") == 1  # no duplicates
    assert added["classification"] == 1
    assert to_template("Show magenta if there are zebras, else purple.", "classification") == \
        "Show {color1} if there are {category}, else {color2}."


def _tiny_t5(folder):
    """A random 1-layer T5 with a word-level tokenizer over the pool's words: the real loading code path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = sorted({w for t in TASKS for s in load_pool()[t] for w in fill(s, "zebra", "magenta", "purple").split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "paraphrase:", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_t5_paraphraser_code_path_and_offline_error(tmp_path, monkeypatch):
    generate = load_t5_generator(str(_tiny_t5(tmp_path / "t5")), seed=0, max_new_tokens=8)
    outputs = generate(["Segment the zebra.", "Create a monocular depth map."], 3)
    assert len(outputs) == 2 and all(len(o) == 3 and all(isinstance(s, str) for s in o) for o in outputs)
    # whatever a random model says, the pool that comes back is valid
    new_pool, _ = extend_pool({t: [TEMPLATES[t]] for t in TASKS}, generate, per_template=2)
    for task, templates in new_pool.items():
        assert TEMPLATES[task] in templates
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests: fail fast, one line
    with pytest.raises(IcvError, match="cannot load paraphrasing model 'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        load_t5_generator("no-such-org/no-such-model")
    result = CliRunner().invoke(icv_data, ["paraphrase", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and result.output.startswith("error: paraphrasing model folder not found")
    result = CliRunner().invoke(icv_data, ["paraphrase", "--model", str(tmp_path / "t5"), "--out", str(tmp_path / "p.json"),
                                           "--per-template", "2", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert load_pool(tmp_path / "p.json")["depth"][:20] == load_pool()["depth"]

"""`icv-data paraphrase`: grow the prompt pool with a T5 paraphrasing model, as the paper did.

Each template is filled with marker words (a category and two colours that paraphrasers keep verbatim),
paraphrased ("paraphrase: <text>", the input format of the common T5 paraphrasers), and turned back into a
template by replacing the marker words with their placeholders. A candidate is kept only if it still holds
exactly the task's placeholders, is new, and (when icv_deploy.tasks.routing is there) routes to the right
task, category and colours: the runtime must understand every instruction the model is trained on.

The model is loaded with transformers' AutoModelForSeq2SeqLM + generate (what the former
`pipeline("text2text-generation")` did; transformers 5 dropped that pipeline task). Loading needs the hub or
a local folder; without either, the command fails with one line saying so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from icv_deploy.errors import IcvError

from .prompts import PLACEHOLDERS, TEMPLATES, fill, placeholders

DEFAULT_MODEL = "humarin/chatgpt_paraphraser_on_T5_base"
MARKERS = {"category": "zebra", "color1": "magenta", "color2": "purple"}
Generator = Callable[[list[str], int], list[list[str]]]


def to_template(text: str, task: str) -> str | None:
    """Paraphrased text -> template (marker words back to placeholders), or None if it lost or gained one."""
    text = " ".join(text.split())
    for name, word in MARKERS.items():
        if name in PLACEHOLDERS[task]:
            text = re.sub(rf"\b{word}s?\b", "{" + name + "}", text, flags=re.IGNORECASE)
        elif re.search(rf"\b{word}\b", text, flags=re.IGNORECASE):
            return None
    text = re.sub(r"\ban (\{category\})", r"a \1", text)  # fill() picks a/an again per category
    if not text or placeholders(text) != PLACEHOLDERS[task] or text.count("{") != len(PLACEHOLDERS[task]):
        return None
    return text[0].upper() + text[1:]


def routes_correctly(task: str, template: str) -> bool:
    """Does the runtime's router send this template (filled with sample values) to its task? True if no router yet."""
    try:
        from icv_deploy.tasks.routing import route
    except ImportError:
        return True
    for category in ("dog", "traffic light", "apple"):
        instruction = fill(template, category if task != "depth" else None, "red", "green")
        try:
            result = route(instruction)
        except Exception:
            return False
        if result.task != task:
            return False
        if task != "depth" and (result.category or "").lower() != category:
            return False
        if task == "classification" and (result.color_if_present, result.color_if_absent) != ("red", "green"):
            return False
    return True


def extend_pool(pool: dict[str, list[str]], generate: Generator, per_template: int = 4,
                check_routing: bool = True) -> tuple[dict[str, list[str]], dict[str, int]]:
    """(new pool, added per task): paraphrases of every template of the pool and of the fixed templates."""
    new_pool, added = {}, {}
    for task, templates in pool.items():
        sources = list(dict.fromkeys([TEMPLATES[task], *templates]))
        texts = [fill(t, MARKERS["category"] if "category" in PLACEHOLDERS[task] else None, MARKERS["color1"], MARKERS["color2"]) for t in sources]
        seen = {t.lower() for t in templates}
        kept = list(templates)
        for outputs in generate(texts, per_template):
            for text in outputs:
                template = to_template(text, task)
                if template is None or template.lower() in seen:
                    continue
                if check_routing and not routes_correctly(task, template):
                    continue
                seen.add(template.lower())
                kept.append(template)
        new_pool[task] = kept
        added[task] = len(kept) - len(templates)
    return new_pool, added


def _resolve_model(model: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). Fails fast, in one line, when the model can only
    come from the hub and the hub cannot be reached (instead of minutes of download retries)."""
    import socket

    from huggingface_hub import constants, snapshot_download

    if Path(model).is_dir():
        return model, True
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        raise IcvError(f"paraphrasing model folder not found: {model}")
    try:
        return snapshot_download(model, local_files_only=True), True  # already in the hub cache
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE:
        raise IcvError(f"cannot load paraphrasing model {model!r}: not in the cache and HF_HUB_OFFLINE is set "
                       f"(pass a local model folder with --model)")
    try:
        socket.create_connection((constants.ENDPOINT.split("//")[-1].split("/")[0], 443), timeout=5).close()
    except OSError as exc:
        raise IcvError(f"cannot load paraphrasing model {model!r}: the hub is unreachable ({exc}); "
                       f"offline? pass a local model folder with --model") from None
    return model, False


def load_t5_generator(model: str, device: str = "cpu", seed: int = 0, max_new_tokens: int = 64) -> Generator:
    """A generator over a T5-style seq2seq paraphraser (hub id or local folder); IcvError if it cannot load."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    source, local_only = _resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        net = AutoModelForSeq2SeqLM.from_pretrained(source, local_files_only=local_only).to(device).eval()
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IcvError(f"cannot load paraphrasing model {model!r}: {first} (offline? pass a local model folder with --model)") from None

    def generate(texts: list[str], n: int) -> list[list[str]]:
        torch.manual_seed(seed)
        batch = tokenizer([f"paraphrase: {t}" for t in texts], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            ids = net.generate(**batch, do_sample=True, top_p=0.95, temperature=1.0, num_return_sequences=n,
                               max_new_tokens=max_new_tokens)
        decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [decoded[i * n:(i + 1) * n] for i in range(len(texts))]

    return generate

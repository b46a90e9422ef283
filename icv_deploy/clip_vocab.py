"""The standard CLIP tokenizer (49,408 tokens), built offline from the BPE merges file.

`assets/bpe_simple_vocab_16e6.txt.gz` is OpenAI CLIP's merge list (MIT licence), the same file that ships in
the `open-clip-torch` package. From it we write the `vocab.json` / `merges.txt` pair that transformers'
`CLIPTokenizer` reads, so models built from configs get the real tokenizer without a model hub.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # the CLIP vocabulary keeps this many merges
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE alphabet: printable bytes map to themselves, the rest to code points >= 256.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    raw = resources.files("icv_deploy").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def save_clip_tokenizer(folder: str | Path) -> Path:
    """Write a diffusers-style `tokenizer/` folder holding the standard CLIP tokenizer."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)
    return folder

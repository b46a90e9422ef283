"""Per-instruction figures of an `icv-eval` run (its predictions.rank*.jsonl), with the words of each instruction that
the training pool (training/prompts/paraphrases.json) never holds, as the bundled tokenizer splits them.

    python per_prompt.py EVAL_OUT [EVAL_OUT ...]

Segmentation: IoU summed over the instruction's queries (intersection / union); depth: mean AbsRel;
classification: accuracy; detection: queries with any box."""
import collections
import json
import sys
from pathlib import Path

from transformers import CLIPTokenizer

from icv_deploy.model_files import BUNDLED_DIR
from icv_deploy.tasks.encodings import COLORS
from icv_deploy.training.synthetic import CATEGORIES

tokenizer = CLIPTokenizer.from_pretrained(BUNDLED_DIR / "demo" / "tokenizer")
pool = json.loads((Path(__file__).resolve().parents[3] / "training/prompts/paraphrases.json").read_text())
known = set()


def walk(x):
    if isinstance(x, str):
        known.update(tokenizer.tokenize(x.replace("{category}", "").replace("{color1}", "").replace("{color2}", "")))
    elif isinstance(x, list):
        [walk(i) for i in x]
    elif isinstance(x, dict):
        [walk(v) for k, v in x.items() if k != "_about"]


walk(pool)
known.update(t for name in COLORS for t in tokenizer.tokenize(name))  # the instructions' colours: the whole palette
for out in sys.argv[1:]:
    groups = collections.defaultdict(list)
    for path in sorted(Path(out).glob("predictions.rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            template = row["instruction"]
            for name in CATEGORIES:
                template = template.replace(name, "{category}")
            for name in sorted(COLORS, key=len, reverse=True):
                template = template.replace(f" {name} ", " {color} ").replace(f" {name}.", " {color}.").replace(
                    f" {name};", " {color};")
            groups[(row["task"], template)].append(row)
    print(f"## {out}\n\n| task | instruction | queries | figure | words not in the pool |\n| --- | --- | ---: | ---: | --- |")
    for (task, template), rows in sorted(groups.items()):
        if task == "segmentation":
            figure = f"IoU {sum(r['inter'] for r in rows) / max(1, sum(r['union'] for r in rows)):.3f}"
        elif task == "depth":
            figure = f"AbsRel {sum(r['depth']['abs_rel'] for r in rows) / len(rows):.3f}"
        elif task == "classification":
            figure = f"accuracy {sum(r['present'] == r['gt_present'] for r in rows) / len(rows):.2f}"
        else:
            figure = f"with boxes {sum(bool(r.get('boxes')) for r in rows)}"
        bare = template.replace("{category}", "").replace("{color}", "")
        words = [t.replace("</w>", "") for t in tokenizer.tokenize(bare) if t not in known]
        print(f"| {task} | {template} | {len(rows)} | {figure} | {' '.join(dict.fromkeys(words))} |")
    print()

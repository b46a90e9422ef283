"""Which task does the text encoder put an instruction nearest to? Nearest task centroid of the pool's instructions
(the last hidden state at all 77 positions, as the UNet reads it), for an evaluation-only pool's instructions and
grammar draws.    python task_probe.py [--pool=unseen|blind] MODEL [MODEL ...]"""
import sys
import numpy as np, torch
from transformers import CLIPTextModel, CLIPTokenizer
from icv_deploy.model_files import resolve_model
from icv_deploy.training.prompts import load_pool, POOL_FILES, fill
from icv_deploy.training.phrasing_grammar import PhrasingGrammar
from icv_deploy.training.synthetic import CATEGORIES

def embed(model_dir, texts):
    tok = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").eval()
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(ids.input_ids).last_hidden_state  # the UNet attends over all 77 positions
    return h.flatten(1).numpy()

def instances(pool, per=5, seed=0):
    rng = np.random.default_rng(seed); out = []
    for task, ts in pool.items():
        for t in ts:
            for c in CATEGORIES[:per]:
                out.append((task, t, fill(t, c if task != "depth" else None, "red", "green")))
                if task == "depth": break
    return out

g = PhrasingGrammar(); rng = np.random.default_rng(5)
grammar = {task: [g.draw(task, rng) for _ in range(40)] for task in g.frames}
args = sys.argv[1:]
pool_name = args.pop(0).split("=", 1)[1] if args and args[0].startswith("--pool=") else "unseen"
for model in args:
    md = resolve_model(model) if not model.startswith("runs") else model
    train = instances(load_pool()); unseen = instances(load_pool(POOL_FILES[pool_name])); gr = instances(grammar, per=1)
    e = embed(md, [x[2] for x in train + unseen + gr])
    et, eu, eg = e[:len(train)], e[len(train):len(train) + len(unseen)], e[len(train) + len(unseen):]
    tasks = list(load_pool())
    cent = np.stack([et[[i for i, x in enumerate(train) if x[0] == t]].mean(0) for t in tasks])
    def acc(E, items):
        d = ((E[:, None] - cent[None]) ** 2).sum(-1); pred = d.argmin(1)
        per = {}
        for (task, t, _), p in zip(items, pred):
            per.setdefault((task, t), []).append(tasks[p])
        return np.mean([tasks[p] == x[0] for p, x in zip(pred, items)]), per
    a, per = acc(eu, unseen); ag, _ = acc(eg, gr)
    print(f"{model}: {pool_name} nearest-task accuracy {a:.2f}, grammar draws {ag:.2f}")
    for (task, t), ps in per.items():
        wrong = [p for p in ps if p != task]
        if wrong: print(f"    {task:14} {t[:70]:70} -> {max(set(wrong), key=wrong.count)} ({len(wrong)}/{len(ps)})")

"""Which words of the evaluation-only instructions (unseen.json) the training pool and the grammar hold."""
import json, re
from icv_deploy.training.prompts import load_pool, UNSEEN_FILE
from icv_deploy.training.phrasing_grammar import GRAMMAR_FILE

def words(text): return set(re.findall(r"[a-z']+", re.sub(r"\{\w+\}", " ", text.lower())))
pool = set().union(*(words(t) for ts in load_pool().values() for t in ts))
g = json.loads(GRAMMAR_FILE.read_text())
grammar = set().union(*(words(a) for alts in g["slots"].values() for a in alts),
                      *(words(f) for k, fs in g.items() if k not in ("_about", "slots") for f in fs))
for task, ts in load_pool(UNSEEN_FILE).items():
    for t in ts:
        w = words(t)
        print(f"{task:14} pool-unknown: {sorted(w - pool)!s:45} grammar-unknown: {sorted(w - pool - grammar)}  | {t}")
print("pool words", len(pool), "grammar words", len(grammar), "union", len(pool | grammar))

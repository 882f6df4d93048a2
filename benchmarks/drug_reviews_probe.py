"""One fine-tuning run of MiniLM on the drug reviews with given loop settings: the probe behind issue
"Recipes that win"'s drug-review findings (one seed per call; not yet a side-by-side benchmark).

    python benchmarks/drug_reviews_probe.py NAME THREADS SEED '{"epochs": 3, "batch_size": 32}'
    python benchmarks/drug_reviews_probe.py NAME 2 0 '{"epochs": 3, "batch_size": 8, "options": {"head_init": "probe"}}'

JSON keys are TrainConfig fields, plus ``strategy`` (default finetune) and ``options`` (the strategy's).
Prints accuracy and balanced accuracy on the 379 test reviews (all 600 training reviews, no validation split).
"""
import sys
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that sentence-transformers imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import time, json, torch, numpy as np  # noqa: E402
import transferkit as tk
from transferkit.backbones import load_backbone
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer
from transferkit.tasks import compute_metrics
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
variant = sys.argv[1]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
train, _, test = tk.prepare_data("drug-reviews", val_fraction=0.0, seed=seed)
print(len(train), len(test), np.bincount(train.targets), flush=True)
bb = load_backbone("sentence:all-MiniLM-L6-v2", max_length=64)
f = bb.forward_features(bb.preprocess(list(train.items[:4])))
print("feat norms", f.norm(dim=-1))
kw = dict(json.loads(sys.argv[4])) if len(sys.argv) > 4 else {}
opts = kw.pop("options", {})
s = make_strategy(kw.pop("strategy", "finetune"), opts)
cfg = TrainConfig(seed=seed, progress=False, **kw)
t = time.time()
model, hist = s.fit(bb, train, None, Trainer(cfg))
m = compute_metrics(train.task, test.targets, s.predict(model, test), train.label_names)
print(variant, kw, opts, "acc %.1f bal %.1f  %.0fs" % (100*m["accuracy"], 100*m["balanced_accuracy"], time.time()-t), flush=True)

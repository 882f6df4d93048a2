"""Debian section as generation: SmolLM2 writes the section name vs a MiniLM classifier, at 32 per class.

    python benchmarks/section_generation.py [--seeds 3] [--per-class 32] [--test-per-class 10]
                                            [--methods linear-probe,zero-shot,lora,finetune] [--epochs 1]
                                            [--finetune-epochs 5]

The same packages, labels and draws two ways, so users see when a sentence encoder is the better tool:

* as classification (the built-in ``debian-packages``, 14 topical sections) on the packaged MiniLM
  (``sentence:all-MiniLM-L6-v2``): ``linear-probe`` (frozen, C by cross-validation) and ``finetune``
  (the strategy's defaults, batch 32, except the epochs, below);
* as generation on the packaged SmolLM2-135M-Instruct (``causal:smollm2``): the prompt asks for the
  section and lists the 14 names, the completion is the name; ``lora`` (the strategy's defaults except
  the epochs, below) and ``zero-shot`` (the same prompt, no training).

Every method reads the same text of each package: its synopsis and description cut to the first
``MAX_WORDS`` words. For each seed the training set is ``sample_per_class(train, 32, seed)`` (448
packages); the test set is a fixed ``--test-per-class`` packages of each section of the held-out split
(``sample_per_class(test, n, 0)``). Generations are mapped to the 14 names: the generation, lower-cased
and stripped of spaces, quotes and final punctuation, must be a section name (``accuracy``); anything
else is wrong and counted in ``unknown``. ``lenient`` also accepts a generation that names exactly one
section among other words (how a chatty zero-shot answer would be read by a forgiving parser).

Accuracy in points, mean ± half-width of the 95% Student-t interval over seeds; differences paired by
seed (zero-shot has no draw: one run, compared with every seed). Each SmolLM2 run is its own process.
CPU budget (2 cores shared with other jobs): texts cut to ``MAX_WORDS`` words, 10 of the 60 test packages
per section, LoRA trained for ``--epochs`` (1: 56 steps of batch 8) and MiniLM fine-tuned for
``--finetune-epochs`` (5: 70 steps of batch 32) instead of their default 20 epochs; results say so. Results: ``benchmarks/results/text_generation/sections.csv`` and ``sections.md``; runs
already in the CSV are kept (delete it to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "text_generation"
CSV = OUT / "sections.csv"
ENCODER = "sentence:all-MiniLM-L6-v2"
LM = "causal:smollm2"
MAX_WORDS = 24
ENCODER_MAX_LENGTH = 96  # 24 words of package text fit (32 words were at most 84 MiniLM tokens)
LM_BATCH = 8
THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))  # torch threads of every run (the machine is shared)
PROMPT = "Debian section of this package? Answer with its name only, one of: {sections}.\n\nPackage: {text}"
#: Decoding budget of both generative methods: room for a chatty zero-shot answer to reach a name (LoRA stops sooner).
MAX_NEW_TOKENS = 16
ORDER = ("zero-shot", "lora", "linear-probe", "finetune")
MODEL_OF = {"zero-shot": "SmolLM2-135M (generation)", "lora": "SmolLM2-135M (generation)",
            "linear-probe": "MiniLM-L6 (classifier)", "finetune": "MiniLM-L6 (classifier)"}


def _cut(text: str) -> str:
    words = text.split()
    return " ".join(words[:MAX_WORDS]) + (" ..." if len(words) > MAX_WORDS else "")


def draws(seed: int, per_class: int, test_per_class: int):
    """(train, test) classification data: the seed's draw of ``per_class`` per section, the fixed test packages."""
    from transferkit.data import load_dataset
    from transferkit.data.dataset import TaskData
    from transferkit.data.splits import sample_per_class

    train, test = load_dataset("debian-packages")
    out = []
    for part, n, s in ((train, per_class, seed), (test, test_per_class, 0)):
        d = sample_per_class(part, n, s)
        out.append(TaskData([_cut(t) for t in d.items], d.targets, "text", label_names=d.label_names,
                            name=f"{d.name}-{n}pc-{MAX_WORDS}w", source=d.source))
    return out[0], out[1]


def as_generation(data):
    """The same packages as prompt -> section-name pairs."""
    from transferkit.data.adapters_generation import from_pairs

    names = ", ".join(data.label_names)
    return from_pairs([PROMPT.format(sections=names, text=t) for t in data.items],
                      [data.label_names[y] for y in data.targets], name=data.name + "-generation")


def read_section(text: str, names: list[str], lenient: bool = False) -> str | None:
    """The section a generation names: the whole answer (trimmed) must be one; ``lenient``: exactly one named.

    Example:
        >>> read_section(" Games.", ["games", "web"]), read_section("It is web.", ["games", "web"], lenient=True)
        ('games', 'web')
    """
    answer = text.strip().strip(" \t\n'\"`*.:;!").lower()
    if answer in names:
        return answer
    if lenient:
        found = {w for w in re.findall(r"[a-z]+", text.lower()) if w in names}
        if len(found) == 1:
            return found.pop()
    return None


def run_encoder(method: str, seed: int, args) -> dict:
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    torch.set_num_threads(THREADS)
    train, test = draws(seed, args.per_class, args.test_per_class)
    strategy = make_strategy(method)
    epochs = args.finetune_epochs if method == "finetune" else None
    t0 = time.perf_counter()
    model, _ = strategy.fit(load_backbone(ENCODER, max_length=ENCODER_MAX_LENGTH), train, None,
                            Trainer(TrainConfig(seed=seed, epochs=epochs, progress=False)))
    t1 = time.perf_counter()
    pred = strategy.predict(model, test).argmax(1)
    return {"method": method, "seed": seed, "epochs": epochs or 0, "accuracy": 100 * float(np.mean(pred == test.targets)),
            "lenient": float("nan"), "unknown": 0.0, "train_s": t1 - t0, "predict_s": time.perf_counter() - t1,
            "load": os.getloadavg()[0]}


def run_lm(method: str, seed: int, args) -> dict:
    """Zero-shot or LoRA on SmolLM2 (called in its own process)."""
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer, predict_outputs

    torch.set_num_threads(THREADS)
    train_c, test_c = draws(seed, args.per_class, args.test_per_class)
    train, test = as_generation(train_c), as_generation(test_c)
    strategy = make_strategy(method)
    t0 = time.perf_counter()
    model, _ = strategy.fit(load_backbone(LM), train, None, Trainer(TrainConfig(
        seed=seed, epochs=args.epochs, batch_size=LM_BATCH, progress=False)))
    t1 = time.perf_counter()
    model.generation = {**model.generation, "max_new_tokens": MAX_NEW_TOKENS}
    outputs = [str(o) for o in predict_outputs(model, test, batch_size=24)]
    names = list(test_c.label_names)
    strict = [read_section(o, names) for o in outputs]
    lenient = [read_section(o, names, lenient=True) for o in outputs]
    truth = [names[y] for y in test_c.targets]
    wrong = [[t, o] for t, o in zip(truth, outputs) if read_section(o, names) != t][:4]
    return {"method": method, "seed": seed if method != "zero-shot" else -1,
            "accuracy": 100 * float(np.mean([s == t for s, t in zip(strict, truth)])),
            "lenient": 100 * float(np.mean([s == t for s, t in zip(lenient, truth)])),
            "unknown": 100 * float(np.mean([s is None for s in strict])),
            "train_s": t1 - t0 if method != "zero-shot" else 0.0, "predict_s": time.perf_counter() - t1,
            "load": os.getloadavg()[0], "epochs": 0 if method == "zero-shot" else args.epochs,
            "steps": 0 if method == "zero-shot" else args.epochs * -(-len(train) // LM_BATCH),
            "examples": json.dumps({"first": [[t, o] for t, o in zip(truth, outputs)][:4], "wrong": wrong})}


def child(method: str, seed: int, args) -> dict:
    """One SmolLM2 run in a fresh process; its RESULT line."""
    argv = [sys.executable, __file__, "--one", f"{method},{seed}", "--per-class", str(args.per_class),
            "--test-per-class", str(args.test_per_class), "--epochs", str(args.epochs)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def summarize(runs: pd.DataFrame, args) -> str:
    from transferkit.evaluation.stats import mean_ci

    def ci(values) -> str:
        values = np.asarray(values, dtype=float)
        if len(values) < 2:
            return f"{values.mean():.1f}"
        mean, lo, hi = mean_ci(values)
        return f"{mean:.1f} ± {(hi - lo) / 2:.1f}"

    def diff(a: pd.DataFrame, b: pd.DataFrame) -> str:
        if a.empty or b.empty:
            return "—"
        if (b.seed < 0).all():  # zero-shot: one run, the same for every draw
            d = a.accuracy.to_numpy() - float(b.accuracy.iloc[0])
        else:
            both = a.merge(b, on="seed", suffixes=("", "_b"))
            d = (both.accuracy - both.accuracy_b).to_numpy()
        if len(d) < 2:
            return f"{d.mean():+.1f} (1 seed)" if len(d) else "—"
        mean, lo, hi = mean_ci(d)
        return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}] ({len(d)} seeds)"

    lora = runs[runs.method == "lora"]
    seeds = runs[runs.seed >= 0].seed.nunique()
    n_test = 14 * args.test_per_class
    lines = ["# Debian section as generation (SmolLM2) vs a sentence-encoder classifier (MiniLM)", "",
             f"`python benchmarks/section_generation.py --seeds {seeds} --per-class {args.per_class} "
             f"--test-per-class {args.test_per_class} --epochs {args.epochs} --finetune-epochs {args.finetune_epochs}`: "
             "`debian-packages`, 14 sections, "
             f"{args.per_class} training packages per section ({14 * args.per_class}, `sample_per_class`, one draw per seed, the same "
             f"draw for every method), {n_test} held-out test packages ({args.test_per_class} per section). Every "
             f"method reads the package's synopsis and description cut to {MAX_WORDS} words. Accuracy in points, "
             f"mean ± 95% CI over {seeds} seeds; differences with LoRA paired by seed (zero-shot: one run, no draw).",
             "",
             "The generative runs answer the prompt *\"" + PROMPT.split("{sections}")[0].replace("\n", " ")
             + "games, science, ...\"* followed by the package text; the completion is the section name; greedy decoding of up to "
             f"{MAX_NEW_TOKENS} new tokens (room for a chatty zero-shot answer to reach a name). A "
             "generation counts only if, trimmed of spaces, quotes and final punctuation and lower-cased, it is "
             "one of the 14 names (`accuracy`); `unknown` is the share of generations that are none of them "
             "(counted wrong); `lenient` also reads an answer that names exactly one section among other words. "
             "Chance is 1/14 = 7.1%.",
             "",
             f"**Cut for the CPU budget** (2 cores shared with other jobs): texts cut to {MAX_WORDS} words, "
             f"{args.test_per_class} of the 60 test packages per section, LoRA trained for {args.epochs} epoch(s) "
             f"({args.epochs * -(-14 * args.per_class // LM_BATCH)} optimizer steps of batch {LM_BATCH}) and MiniLM "
             f"fine-tuned for {args.finetune_epochs} epochs ({args.finetune_epochs * -(-14 * args.per_class // 32)} "
             "steps of batch 32) instead of their default 20 epochs; no validation split; otherwise the "
             "strategies' defaults (LoRA r=8 on every linear layer, lr 1e-3; finetune lr 1e-4, head 1e-3; linear "
             f"probe C by 5-fold cross-validation). Each run had {THREADS} torch thread(s) on a machine shared with "
             f"other jobs ({_load_text(runs)}): `train s` and `predict s` are wall-clock seconds under that load, "
             "comparable only as orders of magnitude.", "",
             "| method | model | runs | accuracy | LoRA minus it | unknown | lenient | train s | predict s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in ORDER:
        rows = runs[runs.method == method]
        if rows.empty:
            continue
        gen = method in ("zero-shot", "lora")
        lines.append(f"| {method} | {MODEL_OF[method]} | {len(rows)} | {ci(rows.accuracy)} | "
                     f"{'—' if method == 'lora' else diff(lora, rows)} | "
                     f"{f'{rows.unknown.mean():.1f}' if gen else '—'} | {f'{rows.lenient.mean():.1f}' if gen else '—'} | "
                     f"{rows.train_s.mean():.0f} | {rows.predict_s.mean():.0f} |")
    missing = [f"{m} seed{'s' if len(left) > 1 else ''} {', '.join(map(str, left))}" for m in ORDER[1:]
               if (left := sorted(set(range(args.seeds)) - set(runs[runs.method == m].seed.astype(int))))]
    if missing:
        lines += ["", f"**Not run** (stopped for time; `python benchmarks/section_generation.py` runs what is missing "
                      f"and keeps these rows): {'; '.join(missing)}. Rows and differences above are over the seeds "
                      "that ran (`runs`, and the seed count of each difference)."]
    for method in ("zero-shot", "lora"):
        rows = runs[(runs.method == method) & runs.examples.notna()] if "examples" in runs else pd.DataFrame()
        if len(rows):
            ex = json.loads(rows.iloc[0].examples)
            shown = ex["first"][:2] + [w for w in ex["wrong"] if w not in ex["first"][:2]][:3]
            lines += ["", f"{method} generations (the first test packages, then the first wrong ones; reference -> "
                          "generated): " + "; ".join(f"{t} -> {json.dumps(o)}" for t, o in shown)]
    return "\n".join(lines)


def _load_text(runs) -> str:
    """The 1-minute load average recorded at the end of the runs (``load``), or that it was not recorded."""
    loads = runs["load"].dropna() if "load" in runs else []
    recorded = f"1-minute load average {loads.min():.1f} to {loads.max():.1f} on 2 cores at the end of the {len(loads)} runs " \
               "that recorded it" if len(loads) else ""
    missing = len(runs) - len(loads)
    return "; ".join(x for x in (recorded, f"load not recorded for {missing} runs" if missing else "") if x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1, help="LoRA's epochs (its default is 20)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="MiniLM finetune's epochs (its default is 20)")
    parser.add_argument("--methods", default="linear-probe,zero-shot,lora,finetune")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # method,seed: one SmolLM2 run in this process
    parser.add_argument("--report", action="store_true", help="only rewrite sections.md from sections.csv")
    args = parser.parse_args()
    if args.one:
        method, seed = args.one.split(",")
        print("RESULT " + json.dumps(run_lm(method, int(seed), args)), flush=True)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    runs = pd.read_csv(CSV) if CSV.exists() else pd.DataFrame()
    done = set() if runs.empty else set(zip(runs.method, runs.seed))
    for method in [] if args.report else args.methods.split(","):
        for seed in [-1] if method == "zero-shot" else range(args.seeds):
            if (method, seed) in done:
                continue
            row = child(method, max(seed, 0), args) if method in ("zero-shot", "lora") else run_encoder(method, seed, args)
            print(row, flush=True)
            runs = pd.concat([runs, pd.DataFrame([row])], ignore_index=True)
            runs.to_csv(CSV, index=False)
    text = summarize(runs, args)
    (OUT / "sections.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

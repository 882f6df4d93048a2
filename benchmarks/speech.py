"""Speech benchmark: keyword spotting with 5 clips per word on unseen voices, Whisper vs the no-transfer baselines.

    python benchmarks/speech.py [--seeds 3] [--per-class 5] [--parts keywords,alsa,speakers] [--quick]

Data: the built-in ``espeak-keywords`` (12 command words spoken by espeak-ng in 8 English accents x
12 voice variants, speed, pitch, leading silence and noise varied; the test's 32 voices use variants
that never occur in training). Each seed draws ``--per-class`` training clips per word (seeded); every
method trains on that same draw and is scored on the same 384 test clips, so the per-seed accuracies
pair across methods. Methods, all through the library's strategies:

* ``whisper probe``: ``linear-probe`` on ``whisper:tiny.en`` (the packaged weights), its encoder's
  frames mean-pooled over the audio, Whisper's own 30 s window (logistic regression, C by
  cross-validation);
* ``whisper probe, 2 s window``: the same with ``max_seconds=2`` (the position table cut to 2 s: 15x
  less encoder work per clip);
* ``mfcc + LR``: ``scratch`` variant ``mfcc`` (MFCC and delta statistics, logistic regression);
* ``log-mel CNN``: ``scratch`` variant ``audio-cnn`` (a ~0.2M-parameter CNN on 40-band log-mel,
  SpecAugment, the small-data schedule).

``alsa`` (a real-voice check): the same methods trained on ``alsa-channels`` (5 espeak-ng clips of each
of the 8 channel names, "front left", ...) and scored on the 8 human recordings of alsa-utils.
``speakers``: speaker identification over the 96 voices (``espeak-speakers``, 5 clips per voice; the
test clips are words the voice never said in training).

Writes ``benchmarks/results/speech/{summary.md,results.json}``; per-seed rows are kept, means with
Student-t 95% intervals over seeds, paired differences between methods.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data import load_dataset  # noqa: E402
from transferkit.evaluation.stats import mean_ci, paired_difference  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.training import TrainConfig, Trainer  # noqa: E402

OUT = Path(__file__).parent / "results" / "speech"
METHODS = {
    "whisper probe": ("linear-probe", {}, ("whisper:tiny.en", {})),
    "whisper probe (2 s window)": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 2})),
    "mfcc + LR": ("scratch", {"variant": "mfcc"}, None),
    "log-mel CNN": ("scratch", {"variant": "audio-cnn"}, None),
}
PAIRS = [("whisper probe", "mfcc + LR"), ("whisper probe", "log-mel CNN"), ("log-mel CNN", "mfcc + LR"),
         ("whisper probe (2 s window)", "whisper probe")]
PARTS = {"keywords": "espeak-keywords", "alsa": "alsa-channels", "speakers": "espeak-speakers"}


def draw(data, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.targets == c), per_class, replace=False)
                          for c in range(len(data.label_names))])
    return data.subset(np.sort(idx), name=f"{data.name}-{per_class}pc-s{seed}")


_BACKBONES: dict = {}


def backbone_for(spec) -> object:
    if spec is None:
        return None
    key = (spec[0], tuple(sorted(spec[1].items())))
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(spec[0], **spec[1])
    return _BACKBONES[key]


def run(method: str, train, test, seed: int) -> dict:
    name, options, spec = METHODS[method]
    strategy = make_strategy(name, options)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, _ = strategy.fit(backbone_for(spec), train, None, Trainer(TrainConfig(seed=seed, progress=False)))
    fit_s = time.perf_counter() - start
    probs = strategy.predict(model, test)
    pred = probs.argmax(1)
    return {"method": method, "seed": seed, "accuracy": float((pred == test.targets).mean()),
            "correct": int((pred == test.targets).sum()), "n_test": len(test), "n_train": len(train),
            "seconds": round(time.perf_counter() - start, 1), "fit_seconds": round(fit_s, 1)}


def summarize_part(rows: list[dict], part: str) -> dict:
    acc = {m: {r["seed"]: r["accuracy"] for r in rows if r["method"] == m} for m in METHODS}
    acc = {m: v for m, v in acc.items() if v}
    table = {m: dict(zip(("mean", "low", "high"), mean_ci([v[k] for k in sorted(v)]))) for m, v in acc.items()}
    pairs = {}
    for a, b in PAIRS:
        common = sorted(set(acc.get(a, {})) & set(acc.get(b, {})))
        if common:  # paired over the seeds both ran
            d = paired_difference([acc[a][k] for k in common], [acc[b][k] for k in common])
            pairs[f"{a} - {b}"] = {**dict(zip(("mean", "low", "high"), d)), "n": len(common)}
    return {"part": part, "per_method": table, "paired": pairs}


def pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def signed(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


def write_summary(results: dict, args) -> None:
    lines = ["# Speech transfer: Whisper tiny.en vs no-transfer baselines", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work "
             f"(torch threads {torch.get_num_threads()}), no GPU; torch {torch.__version__}.", ""]
    titles = {"keywords": "Keyword spotting (12 words, unseen voices)",
              "alsa": "Real voices: espeak-ng training clips, the 8 human alsa-utils clips as the test",
              "speakers": "Speaker identification (96 espeak-ng voices, unseen words)"}
    for part, res in results["parts"].items():
        summary = res["summary"]
        n_test = res["rows"][0]["n_test"]
        lines += [f"## {titles[part]}", "", f"Command: `{res['command']}`", "",
                  f"{res['per_class']} training clips per class, a new draw per seed, {n_test} test clips; accuracy "
                  f"in %, mean [95% CI over seeds] (n/a with one seed).", "",
                  "| method | seeds | accuracy | per seed |", "| --- | --- | --- | --- |"]
        for m, s in summary["per_method"].items():
            seeds = [r for r in res["rows"] if r["method"] == m]
            per_seed = ", ".join(pts(r["accuracy"]) for r in seeds)
            lines.append(f"| {m} | {len(seeds)} | {pts(s['mean'])} [{pts(s['low'])}, {pts(s['high'])}] | {per_seed} |")
        if summary["paired"]:
            lines += ["", "Paired differences (same draws, same test clips; the seeds both methods ran), points:", "",
                      "| difference | seeds | mean [95% CI] |", "| --- | --- | --- |"]
            for name, d in summary["paired"].items():
                lines.append(f"| {name} | {d['n']} | {signed(d['mean'])} [{signed(d['low'])}, {signed(d['high'])}] |")
        lines.append("")
    lines += ["## Notes", "", *results["notes"], ""]
    (OUT / "summary.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--parts", default="keywords,alsa")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--note", default="", help="a line added to the notes of summary.md (a cut, and why)")
    ap.add_argument("--summarize-only", action="store_true", help="rewrite summary.md from results.json")
    ap.add_argument("--quick", action="store_true", help="one seed, the 2 s window and the baselines, to /tmp")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.quick:
        OUT, args.seeds = Path("/tmp/speech_quick"), 1
        methods = ["whisper probe (2 s window)", "mfcc + LR", "log-mel CNN"]
    OUT.mkdir(parents=True, exist_ok=True)
    notes = [
        "- Whisper's encoder is frozen (a linear probe): fine-tuning or LoRA through a 30 s window on two shared "
        "CPU cores was not run here; see the guide for the commands.",
        "- The test voices of keyword spotting use espeak-ng voice variants never heard in training; all clips "
        "are synthetic except the 8 alsa-utils recordings (one human voice).",
        "- The MFCC and CNN baselines see the same draws; the logistic regressions choose C by cross-validation "
        "on the training draw only.",
    ]
    json_path = OUT / "results.json"
    results = {"torch_threads": torch.get_num_threads(), "parts": {}, "notes": notes}
    if json_path.is_file() and not args.quick:  # parts run by an earlier command are kept
        earlier = json.loads(json_path.read_text(encoding="utf-8"))
        results["parts"] = {p: r for p, r in earlier.get("parts", {}).items() if p not in args.parts.split(",")}
        for r in results["parts"].values():  # written before parts carried their own command
            r.setdefault("command", "python " + earlier.get("command", "benchmarks/speech.py"))
            r.setdefault("per_class", r["rows"][0]["n_train"] // (12 if r["rows"][0]["n_test"] == 384 else 8))
        results["notes"] = earlier.get("notes", notes)
    if args.note:
        results["notes"] = [*results["notes"], f"- {args.note}"]
    if args.summarize_only:  # rewrite summary.md from results.json (after a run was stopped), nothing runs
        for part, res in earlier.get("parts", {}).items():
            res.setdefault("command", "python " + earlier.get("command", "benchmarks/speech.py"))
            res.setdefault("per_class", args.per_class)
            res["summary"] = summarize_part(res["rows"], part)
            results["parts"][part] = res
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        write_summary(results, args)
        return print((OUT / "summary.md").read_text(encoding="utf-8"))
    command = "python benchmarks/speech.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:])
    for part in [p for p in args.parts.split(",") if p]:
        train_all, test = load_dataset(PARTS[part])
        rows = []
        for seed in range(args.seeds):
            train = draw(train_all, args.per_class, seed)
            for method in methods:
                row = run(method, train, test, seed)
                rows.append(row)
                print(json.dumps({"part": part, **row}), flush=True)
                results["parts"][part] = {"rows": rows, "summary": summarize_part(rows, part), "command": command,
                                          "per_class": args.per_class}
                json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
                write_summary(results, args)
    print((OUT / "summary.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

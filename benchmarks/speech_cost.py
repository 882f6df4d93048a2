"""What speech transfer costs: training and inference time per second of audio, and peak memory, per method.

    python benchmarks/speech_cost.py [--rounds 2] [--per-class 5] [--test-per-class 4] [--asr-clips 8]

Each method runs in a process of its own (so its peak resident memory is its own), one torch thread, and the
methods are interleaved: every round runs each of them once, in an order rotated from round to round, so
that the load of the shared machine falls on all of them alike. Every round draws its own training clips
(seed = round) and the feature cache is a fresh folder per process (probes pay for their features).

Methods, on ``espeak-keywords`` (``--per-class`` training clips per word, ``--test-per-class`` test clips
per word from the unseen voices), through the library's strategies as ``benchmarks/speech.py`` runs them:

* ``whisper probe``: ``linear-probe`` on ``whisper:tiny.en``, its 30 s window;
* ``whisper probe (2 s window)``: the same with ``max_seconds=2``;
* ``whisper LoRA (2 s window)``: ``lora`` on the 2 s window, ``--epochs`` epochs (a cut schedule);
* ``mfcc + LR``: ``scratch`` variant ``mfcc``;
* ``log-mel CNN``: ``scratch`` variant ``audio-cnn`` (its own small-data schedule);
* ``ASR decode``: ``whisper:tiny.en`` with its decoder transcribing ``--asr-clips`` of the everyday
  sentences of ``espeak-sentences`` (``test_words="other"``, en-us), its 30 s window, greedy, batch 8 (inference only: LoRA training on transcripts is
  timed in ``asr.md``).

Per method: the training wall time over the seconds of training audio (the whole fit, all its epochs, feature
extraction included), the prediction wall time over the seconds of test audio (a real-time factor), the peak
resident memory of the process (``ru_maxrss``) and what it was before the model was loaded. Writes
``benchmarks/results/speech/cost.json`` (every round) and ``cost.md`` (the mean and range over rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).parent / "results" / "speech"
METHODS = {
    "whisper probe": ("linear-probe", {}, {}),
    "whisper probe (2 s window)": ("linear-probe", {}, {"max_seconds": 2}),
    "whisper LoRA (2 s window)": ("lora", {}, {"max_seconds": 2}),
    "mfcc + LR": ("scratch", {"variant": "mfcc"}, None),
    "log-mel CNN": ("scratch", {"variant": "audio-cnn"}, None),
    "ASR decode": (None, {}, {"decoder": True}),
}


def rss_mb() -> float:
    """The resident memory of this process now, in MiB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seconds_of(items) -> float:
    import soundfile as sf

    return float(sum(sf.info(str(p)).duration for p in items))


def draw(data, per_class: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.targets == c), per_class, replace=False)
                          for c in range(len(data.label_names))])
    return data.subset(np.sort(idx), name=f"{data.name}-{per_class}pc-s{seed}")


def worker(method: str, seed: int, args) -> dict:
    """One method, one round, in this process."""
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.data import load_dataset
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    strategy_name, options, backbone_options = METHODS[method]
    if strategy_name is None:  # transcribing
        _, test = load_dataset("espeak-sentences", voice="en-us", n_train=10, n_test=args.asr_clips,
                               test_words="other")
        before = rss_mb()
        bb = load_backbone("whisper:tiny.en", **backbone_options)
        start = time.perf_counter()
        texts = []
        for i in range(0, len(test), 8):
            texts += bb.generate(bb.preprocess(list(test.items[i:i + 8])), max_new_tokens=64)
        predict_s = time.perf_counter() - start
        from transferkit.tasks import get_task

        quality = {"wer": get_task("speech-recognition").metrics(test.targets, texts)["wer"]}
        train_s = train_audio = epochs = None
    else:
        train, test = load_dataset("espeak-keywords")
        train, test = draw(train, args.per_class, seed), draw(test, args.test_per_class, 0)
        before = rss_mb()
        bb = load_backbone("whisper:tiny.en", **backbone_options) if backbone_options is not None else None
        strategy = make_strategy(strategy_name, options)
        torch.manual_seed(seed)
        config = TrainConfig(seed=seed, progress=False, **({"epochs": args.epochs} if strategy_name == "lora" else {}))
        start = time.perf_counter()
        model, history = strategy.fit(bb, train, None, Trainer(config))
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        probs = strategy.predict(model, test)
        predict_s = time.perf_counter() - start
        quality = {"accuracy": float((probs.argmax(1) == test.targets).mean())}
        train_audio, epochs = seconds_of(train.items), len(history) or 1
    test_audio = seconds_of(test.items)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "round": seed, "train_seconds": train_s, "train_audio_seconds": train_audio,
            "epochs": epochs, "predict_seconds": predict_s, "test_audio_seconds": test_audio,
            "train_per_audio_second": None if train_s is None else train_s / train_audio,
            "predict_per_audio_second": predict_s / test_audio, "rss_before_model_mb": before,
            "peak_rss_mb": peak, **quality, "load_average": os.getloadavg()[0], "torch": torch.__version__}


def run_rounds(args, command: str) -> list[dict]:
    methods = [m for m in args.methods.split(",")] if args.methods else list(METHODS)
    rows = []
    home = Path(os.environ.get("TRANSFERKIT_CACHE") or Path.home() / ".cache" / "transferkit")
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for method in order:
            with tempfile.TemporaryDirectory() as cache:  # a fresh feature cache; the clips and Whisper shared
                for shared in ("speech", "whisper"):
                    (home / shared).mkdir(parents=True, exist_ok=True)
                    os.symlink(home / shared, Path(cache) / shared)
                env = {**os.environ, "TRANSFERKIT_CACHE": cache}
                cmd = [sys.executable, __file__, "--worker", method, "--seed", str(r), "--per-class",
                       str(args.per_class), "--test-per-class", str(args.test_per_class), "--asr-clips",
                       str(args.asr_clips), "--epochs", str(args.epochs)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{method} (round {r}) failed")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            write(rows, args, command)  # after every method: a stopped run keeps what finished
            print(f"round {r} {method}: train {row['train_seconds']}, predict {row['predict_seconds']:.1f} s, "
                  f"peak {row['peak_rss_mb']:.0f} MiB", flush=True)
    return rows


def summarize(rows: list[dict], args, command: str) -> str:
    import numpy as np

    def cell(values, fmt="{:.3f}"):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return fmt.format(np.mean(values)) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
                                              if len(values) > 1 else "")

    lines = ["# What speech transfer costs: time per second of audio and peak memory", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work (1-minute load "
             f"average {min(r['load_average'] for r in rows):.1f} to {max(r['load_average'] for r in rows):.1f} "
             f"during the runs), no GPU; torch {rows[0]['torch']}, one thread per method, each method in its own process, methods "
             f"interleaved ({args.rounds} rounds, the order rotated each round).", "",
             "Seconds of wall time per second of audio: training over the training clips' audio (the whole fit: "
             "feature extraction, every epoch), prediction over the test clips' audio (a real-time factor; below 1 "
             "is faster than real time). Mean over rounds (range). Peak memory is the process's peak resident set "
             "(ru_maxrss); 'before the model' is its resident set once Python, torch, transformers and the data "
             "were loaded.", "",
             "| method | training s per audio s | epochs | per epoch | prediction s per audio s | peak memory (MiB) | "
             "before the model (MiB) | accuracy / WER |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        quality = (f"WER {100 * np.mean([r['wer'] for r in mine]):.1f}%" if "wer" in mine[0]
                   else f"{100 * np.mean([r['accuracy'] for r in mine]):.1f}%")
        epochs = sorted({r["epochs"] for r in mine if r["epochs"] is not None})
        lines.append(f"| {method} | {cell([r['train_per_audio_second'] for r in mine])} | "
                     f"{', '.join(map(str, epochs)) or '-'} | "
                     f"{cell([r['train_per_audio_second'] / r['epochs'] for r in mine if r['epochs']])} | "
                     f"{cell([r['predict_per_audio_second'] for r in mine])} | "
                     f"{cell([r['peak_rss_mb'] for r in mine], '{:.0f}')} | "
                     f"{cell([r['rss_before_model_mb'] for r in mine], '{:.0f}')} | {quality} |")
    lines += ["", f"Data: {args.per_class} training clips per word of espeak-keywords (a new draw each round; "
                  f"{next((r['train_audio_seconds'] for r in rows if r['train_audio_seconds']), 0):.0f} s of audio in round 0), "
                  f"{args.test_per_class} test clips per word from unseen voices "
                  f"({next((r['test_audio_seconds'] for r in rows if r['method'] != 'ASR decode'), 0):.0f} s); "
                  f"ASR: {args.asr_clips} everyday sentences of espeak-sentences in en-us "
                  f"({next((r['test_audio_seconds'] for r in rows if r['method'] == 'ASR decode'), 0):.0f} s), "
                  f"batch 8, greedy. LoRA: {args.epochs} epochs (a cut schedule, as the ASR benchmark's). "
                  f"Accuracy on {args.test_per_class * 12} test clips is a sanity check, not the keyword "
                  f"benchmark (summary.md).", "", "## Notes", "",
              "- Whisper pads every clip to its window: a keyword clip (under 1.5 s) pays for 30 s of audio at the "
              "default window, which is why the 2 s window (`max_seconds=2`) costs a fraction of it per second of "
              "these clips; a recording as long as the window would not pay that overhead.",
              "- The probes' training time is mostly extracting features (one encoder pass per clip) before a "
              "logistic regression; the log-mel CNN's is its 150 epochs on the training clips; LoRA's 3 epochs are a "
              "cut of its default schedule, so its accuracy here says nothing of what LoRA reaches.",
              "- Peak memory includes what Python, torch, transformers and the data hold before the model is "
              "loaded (the last column); timings on this shared machine vary with the other work on it (the "
              "ranges over rounds)."]
    return "\n".join(lines) + "\n"


def write(rows: list[dict], args, command: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cost.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    (OUT / "cost.md").write_text(summarize(rows, args, command))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--test-per-class", type=int, default=4)
    parser.add_argument("--asr-clips", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="LoRA's epochs")
    parser.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--summarize-only", action="store_true", help="rewrite cost.md from cost.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed, args)))
        return
    if args.summarize_only:
        saved = json.loads((OUT / "cost.json").read_text())
        write(saved["rows"], args, saved["command"])
        return print((OUT / "cost.md").read_text())
    command = ("python benchmarks/speech_cost.py " + " ".join(sys.argv[1:])).strip()
    run_rounds(args, command)
    print((OUT / "cost.md").read_text())


if __name__ == "__main__":
    main()

"""Speech benchmark: keyword spotting and speaker identification with 5 clips per class, transfer vs no transfer.

    python benchmarks/speech.py [--seeds 3] [--per-class 5] [--parts keywords,alsa,speakers,augment,vad,pauses] [--quick]

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
``vad``: keyword spotting with the Whisper probe (2 s window) and MFCC + LR, silence trimmed with
Silero VAD (the ``vad`` option), also shortened inside clips (``vad="speech"``) or not, written to ``vad.md``;
``pauses``: the same with each clip said twice, 1 to 2.5 s of silence between (Whisper through a 6 s window),
also in ``vad.md``. ``augment``: keyword spotting as above with the ``audio_augment`` option on and off (speed, pitch, noise,
shift) for the log-mel CNN and for Whisper fine-tuned through a 2 s window (5 epochs), written to
``augment.md``. ``speakers``: speaker identification over the 96 voices (``espeak-speakers``: 5 of each voice's 8
training words per seed; the 384 test clips are the 4 words no voice said in training). Its methods:

* ``resemblyzer probe``: ``linear-probe`` on ``resemblyzer:`` (the packaged speaker encoder, trained
  for speaker verification: the source task closest to this one);
* ``whisper probe (2 s window)`` (as above; the 30 s window costs ~15x more and was not run here);
* ``mfcc + LR`` (as above).

Writes ``benchmarks/results/speech/results.json`` and two summaries: ``summary.md`` (keywords, alsa)
and ``speaker_id.md`` (speakers); per-seed rows are kept, means with Student-t 95% intervals over
seeds, paired differences between methods.
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
#: What the augment part's methods turn on (the audio_augment option: each on half the training clips).
AUGMENTS = ("speed", "pitch", "noise", "shift")
METHODS = {
    "whisper probe": ("linear-probe", {}, ("whisper:tiny.en", {})),
    "whisper probe (2 s window)": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 2})),
    "mfcc + LR": ("scratch", {"variant": "mfcc"}, None),
    "log-mel CNN": ("scratch", {"variant": "audio-cnn"}, None),
    "resemblyzer probe": ("linear-probe", {}, ("resemblyzer:", {})),
    "log-mel CNN + audio_augment": ("scratch", {"variant": "audio-cnn", "audio_augment": list(AUGMENTS)}, None),
    "whisper finetune (2 s window)": ("finetune", {}, ("whisper:tiny.en", {"max_seconds": 2})),
    "whisper finetune (2 s window) + audio_augment": ("finetune", {"audio_augment": list(AUGMENTS)},
                                                      ("whisper:tiny.en", {"max_seconds": 2})),
    "whisper probe (2 s window) + vad": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 2, "vad": True})),
    "mfcc + LR + vad": ("scratch", {"variant": "mfcc", "vad": True}, None),
    "whisper probe (2 s window) + vad speech": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 2,
                                                                                        "vad": "speech"})),
    "mfcc + LR + vad speech": ("scratch", {"variant": "mfcc", "vad": "speech"}, None),
    "whisper probe (6 s window)": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 6})),
    "whisper probe (6 s window) + vad": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 6, "vad": True})),
    "whisper probe (6 s window) + vad speech": ("linear-probe", {}, ("whisper:tiny.en", {"max_seconds": 6,
                                                                                        "vad": "speech"})),
}
#: The pauses part: each clip is said twice with this much silence between (seconds, drawn per clip).
PAUSE = (1.0, 2.5)
#: Epochs of methods whose default schedule is too long for the shared CPU (the cut is stated in the notes).
EPOCHS = {"whisper finetune (2 s window)": 5, "whisper finetune (2 s window) + audio_augment": 5}
_WORD_PAIRS = [("whisper probe", "mfcc + LR"), ("whisper probe", "log-mel CNN"), ("log-mel CNN", "mfcc + LR"),
               ("whisper probe (2 s window)", "whisper probe")]
#: The paired differences each part reports (where both methods ran).
PAIRS = {"keywords": _WORD_PAIRS, "alsa": _WORD_PAIRS,
         "speakers": [("resemblyzer probe", "mfcc + LR"), ("whisper probe (2 s window)", "mfcc + LR"),
                      ("resemblyzer probe", "whisper probe (2 s window)"), *_WORD_PAIRS],
         "augment": [("log-mel CNN + audio_augment", "log-mel CNN"),
                     ("whisper finetune (2 s window) + audio_augment", "whisper finetune (2 s window)")],
         "vad": [("whisper probe (2 s window) + vad", "whisper probe (2 s window)"), ("mfcc + LR + vad", "mfcc + LR"),
                 ("whisper probe (2 s window) + vad speech", "whisper probe (2 s window) + vad"),
                 ("mfcc + LR + vad speech", "mfcc + LR + vad")],
         "pauses": [("whisper probe (6 s window) + vad", "whisper probe (6 s window)"),
                    ("whisper probe (6 s window) + vad speech", "whisper probe (6 s window) + vad"),
                    ("mfcc + LR + vad", "mfcc + LR"), ("mfcc + LR + vad speech", "mfcc + LR + vad")]}
PARTS = {"keywords": "espeak-keywords", "alsa": "alsa-channels", "speakers": "espeak-speakers",
         "augment": "espeak-keywords", "vad": "espeak-keywords", "pauses": "espeak-keywords"}
CLASSES = {"keywords": 12, "alsa": 8, "speakers": 96, "augment": 12, "vad": 12, "pauses": 12}
#: The methods each part runs unless --methods names others.
PART_METHODS = {"keywords": ["whisper probe", "whisper probe (2 s window)", "mfcc + LR", "log-mel CNN"],
                "alsa": ["whisper probe", "whisper probe (2 s window)", "mfcc + LR", "log-mel CNN"],
                "speakers": ["resemblyzer probe", "whisper probe (2 s window)", "mfcc + LR"],
                "augment": ["log-mel CNN", "log-mel CNN + audio_augment", "whisper finetune (2 s window)",
                            "whisper finetune (2 s window) + audio_augment"],
                "vad": ["whisper probe (2 s window)", "whisper probe (2 s window) + vad",
                        "whisper probe (2 s window) + vad speech", "mfcc + LR", "mfcc + LR + vad",
                        "mfcc + LR + vad speech"],
                "pauses": ["whisper probe (6 s window)", "whisper probe (6 s window) + vad",
                           "whisper probe (6 s window) + vad speech", "mfcc + LR", "mfcc + LR + vad",
                           "mfcc + LR + vad speech"]}
#: Summary file -> (its title, the parts it reports).
SUMMARIES = {"summary.md": ("Speech transfer: Whisper tiny.en vs no-transfer baselines", ("keywords", "alsa")),
             "speaker_id.md": ("Speaker identification: resemblyzer and Whisper tiny.en vs MFCC", ("speakers",)),
             "augment.md": ("Keyword spotting with and without audio_augment", ("augment",)),
             "vad.md": ("Keyword spotting with and without trimming silence (vad)", ("vad", "pauses"))}


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
    epochs = {"epochs": EPOCHS[method]} if method in EPOCHS else {}
    model, _ = strategy.fit(backbone_for(spec), train, None, Trainer(TrainConfig(seed=seed, progress=False, **epochs)))
    fit_s = time.perf_counter() - start
    probs = strategy.predict(model, test)
    pred = probs.argmax(1)
    row = {"method": method, "seed": seed, "accuracy": float((pred == test.targets).mean()),
           "correct": int((pred == test.targets).sum()), "n_test": len(test), "n_train": len(train),
           "seconds": round(time.perf_counter() - start, 1), "fit_seconds": round(fit_s, 1)}
    return {**row, **voice_parts(pred, test)}


def inner_pauses(*datas) -> dict:
    """How many clips ``vad="speech"`` changes (a pause inside the clip over 0.1 s), of all clips of ``datas``."""
    from transferkit.backbones.audio import read_audio
    from transferkit.backbones.vad import keep_speech, trim_silence

    waves = [read_audio(item) for data in datas for item in data.items]
    return {"clips": len(waves), "changed_by_speech": sum(len(keep_speech(w)) != len(trim_silence(w)) for w in waves)}


def with_pauses(data, seed: int = 0):
    """``data`` with each clip said twice: the clip, a pause of ``PAUSE`` seconds (drawn per clip) of noise at the
    clip's own floor (the RMS of its quietest 50 ms), the clip again; 16 kHz arrays, the same labels."""
    from transferkit.backbones.audio import read_audio
    from transferkit.data.dataset import TaskData

    rng, items = np.random.default_rng(seed), []
    for item in data.items:
        wave = read_audio(item)
        frames = wave[:len(wave) // 800 * 800].reshape(-1, 800)
        floor = float(np.sqrt((frames ** 2).mean(axis=1)).min()) if len(frames) else 0.0
        pause = (floor * rng.standard_normal(int(rng.uniform(*PAUSE) * 16000))).astype(np.float32)
        items.append(np.concatenate([wave, pause, wave]))
    return TaskData(items, data.targets, "audio", label_names=data.label_names, name=f"{data.name}-pauses")


def voice_parts(pred: np.ndarray, test) -> dict:
    """For espeak-ng voices (``ACCENT+VARIANT``): how often the predicted voice has the right variant, the right
    accent, the right sex (variants m* and f*)."""
    if not all("+" in name for name in test.label_names):
        return {}
    accent, variant = (np.array(part) for part in zip(*(n.split("+", 1) for n in test.label_names)))
    truth = test.targets
    return {"variant_accuracy": float((variant[pred] == variant[truth]).mean()),
            "accent_accuracy": float((accent[pred] == accent[truth]).mean()),
            "sex_accuracy": float((np.char.startswith(variant[pred], "f") == np.char.startswith(variant[truth], "f"))
                                  .mean())}


def summarize_part(rows: list[dict], part: str) -> dict:
    order = dict.fromkeys(r["method"] for r in rows)  # the order they ran in
    acc = {m: {r["seed"]: r["accuracy"] for r in rows if r["method"] == m} for m in order}
    table = {m: dict(zip(("mean", "low", "high"), mean_ci([v[k] for k in sorted(v)]))) for m, v in acc.items()}
    pairs = {}
    for a, b in PAIRS[part]:
        common = sorted(set(acc.get(a, {})) & set(acc.get(b, {})))
        if common:  # paired over the seeds both ran
            d = paired_difference([acc[a][k] for k in common], [acc[b][k] for k in common])
            pairs[f"{a} - {b}"] = {**dict(zip(("mean", "low", "high"), d)), "n": len(common)}
    return {"part": part, "per_method": table, "paired": pairs}


def pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def signed(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


TITLES = {"keywords": "Keyword spotting (12 words, unseen voices)",
          "alsa": "Real voices: espeak-ng training clips, the 8 human alsa-utils clips as the test",
          "speakers": "Speaker identification (96 espeak-ng voices, unseen words)",
          "augment": "Keyword spotting (12 words, unseen voices), audio_augment on and off",
          "vad": "Keyword spotting (12 words, unseen voices), silence trimmed with Silero VAD or not",
          "pauses": "Each keyword said twice with 1 to 2.5 s of silence between: vad off, trim, speech"}
NOTES = {
    "summary.md": [
        "- Whisper's encoder is frozen (a linear probe): fine-tuning or LoRA through a 30 s window on two shared "
        "CPU cores was not run here; see the guide for the commands.",
        "- The test voices of keyword spotting use espeak-ng voice variants never heard in training; all clips "
        "are synthetic except the 8 alsa-utils recordings (one human voice).",
        "- The MFCC and CNN baselines see the same draws; the logistic regressions choose C by cross-validation "
        "on the training draw only.",
    ],
    "speaker_id.md": [
        "- Every method is a logistic regression (C by cross-validation on the training draw only) on fixed "
        "features: resemblyzer's and Whisper's encoders are frozen, MFCC statistics have no parameters. All "
        "see the same 5 clips per voice in each seed and are scored on the same 384 test clips (the words "
        "stop, go, one, two, which no voice said in training). Chance is 1.0%.",
        "- Whisper reads a 2 s window here (its position table cut to 2 s; every clip is under 1.5 s). Its "
        "30 s window, about 15x the encoder work per clip, was not run for speakers; on keyword spotting the "
        "two windows scored within a point of each other (summary.md).",
        "- resemblyzer embeds partial utterances of 1.6 s: every clip here is shorter, so each is one partial "
        "zero-padded to 1.6 s, as resemblyzer's own embed_utterance does. Its silence trimming (webrtcvad) "
        "is not reproduced; these clips have at most 0.3 s of leading silence.",
        "- The 96 voices are espeak-ng's formant synthesis: 8 accents x 12 voice variants, with speed and "
        "pitch drawn per clip (the same voice speaks each word at its own speed and pitch) and noise at 10-40 dB "
        "SNR, so a voice is a "
        "timbre and an accent, not a person. All clips are synthetic.",
    ],
    "augment.md": [
        "- audio_augment=[speed, pitch, noise, shift]: each change on half of the training clips as they are read, "
        "drawn anew every epoch (speed x0.9-1.1, pitch -2 to +2 semitones, white noise at 10-30 dB SNR, up to "
        "0.2 s of leading silence); predictions read the clips as they are. With and without it, a method sees "
        "the same draw of training clips in each seed and the same test clips, so the differences pair by seed.",
        "- The log-mel CNN keeps its own schedule and SpecAugment in both rows. Whisper is fine-tuned (every "
        "layer, the finetune strategy's defaults) through a 2 s window for 5 epochs, a cut of the strategy's 20 "
        "for the shared CPU.",
        "- The built-in training clips already vary speed, pitch, leading silence and noise per voice and word "
        "(espeak-keywords), so this measures augmentation on top of varied data.",
    ],
    "vad.md": [
        "- vad=True: each clip, in training and test alike, is cut to the stretch from the start of its first to "
        "the end of its last speech segment found by Silero VAD (30 ms kept on each side; a clip in which none "
        "is found is kept whole). The clips of espeak-keywords have up to 0.3 s of leading silence and noise at "
        "10-40 dB SNR. Same draws and test clips with and without, so the differences pair by seed.",
    ],
}


def write_summary(results: dict) -> list[str]:
    """Write each summary file whose parts have results; return the files written."""
    written = []
    for file, (title, parts) in SUMMARIES.items():
        ran = {p: r for p, r in results["parts"].items() if p in parts}
        if not ran:
            continue
        lines = [f"# {title}", "", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
                 f"work, no GPU; torch {torch.__version__}.", ""]
        for part, res in ran.items():
            lines += part_lines(part, res)
        lines += ["## Notes", "", *results["notes"].get(file, []), ""]
        (OUT / file).write_text("\n".join(lines), encoding="utf-8")
        written.append(file)
    return written


def part_lines(part: str, res: dict) -> list[str]:
    summary, n_test = res["summary"], res["rows"][0]["n_test"]
    lines = [f"## {TITLES[part]}", "", f"Command: `{res['command']}`", "",
             f"{res['per_class']} training clips per class, a new draw per seed, {n_test} test clips, torch threads "
             f"{res.get('torch_threads', '?')}; accuracy in %, mean [95% CI over seeds] (n/a with one seed).", "",
             "| method | seeds | accuracy | per seed |", "| --- | --- | --- | --- |"]
    for m, s in summary["per_method"].items():
        seeds = [r for r in res["rows"] if r["method"] == m]
        per_seed = ", ".join(pts(r["accuracy"]) for r in seeds)
        lines.append(f"| {m} | {len(seeds)} | {pts(s['mean'])} [{pts(s['low'])}, {pts(s['high'])}] | {per_seed} |")
    parts = [k for k in ("variant_accuracy", "accent_accuracy", "sex_accuracy") if k in res["rows"][0]]
    if parts:
        lines += ["", "What the predicted voice gets right: its variant (m1-m7, f1-f5, the timbre espeak-ng gives a "
                  "voice; chance 8.3%), its accent (chance 12.5%), its sex (m or f); % over the same test clips, mean "
                  "[95% CI over seeds]:", "", "| method | variant | accent | sex |", "| --- | --- | --- | --- |"]
        for m in summary["per_method"]:
            cells = [mean_ci([r[k] for r in res["rows"] if r["method"] == m]) for k in parts]
            lines.append(f"| {m} | " + " | ".join(f"{pts(a)} [{pts(lo)}, {pts(hi)}]" for a, lo, hi in cells) + " |")
    if "inner_pauses" in res:
        p = res["inner_pauses"]
        lines += ["", f"Clips that vad speech cuts differently from vad (a pause inside over 0.1 s): "
                  f"{p['changed_by_speech']} of {p['clips']} (training and test clips, Silero VAD)."]
    if summary["paired"]:
        lines += ["", "Paired differences (same draws, same test clips; the seeds both methods ran), points:", "",
                  "| difference | seeds | mean [95% CI] |", "| --- | --- | --- |"]
        for name, d in summary["paired"].items():
            lines.append(f"| {name} | {d['n']} | {signed(d['mean'])} [{signed(d['low'])}, {signed(d['high'])}] |")
    return [*lines, ""]


def read_earlier(json_path: Path, rerun: list[str]) -> dict:
    """results.json of earlier commands: their parts (but those run again) and notes, in today's layout."""
    earlier = json.loads(json_path.read_text(encoding="utf-8"))
    notes = earlier.get("notes", {})
    notes = {"summary.md": notes} if isinstance(notes, list) else notes  # before speaker_id.md
    parts = {p: r for p, r in earlier.get("parts", {}).items() if p not in rerun}
    for part, r in parts.items():  # written before parts carried their command, draw size and threads
        r.setdefault("command", "python " + earlier.get("command", "benchmarks/speech.py"))
        r.setdefault("per_class", r["rows"][0]["n_train"] // CLASSES[part])
        r.setdefault("torch_threads", earlier.get("torch_threads"))
        r["summary"] = summarize_part(r["rows"], part)
    return {"parts": parts, "notes": {f: notes.get(f, NOTES[f]) for f in NOTES}}


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--parts", default="keywords,alsa")
    ap.add_argument("--methods", default="", help="comma-separated; default: each part's own (PART_METHODS)")
    ap.add_argument("--note", default="", help="a line added to the notes of the summaries of --parts (a cut, and why)")
    ap.add_argument("--summarize-only", action="store_true", help="rewrite the summaries from results.json")
    ap.add_argument("--quick", action="store_true", help="one seed, no 30 s Whisper window, to /tmp")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if args.quick:
        OUT, args.seeds = Path("/tmp/speech_quick"), 1
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / "results.json"
    results = {"parts": {}, "notes": {f: list(n) for f, n in NOTES.items()}}
    if json_path.is_file() and not args.quick:  # parts run by an earlier command are kept
        results = read_earlier(json_path, [] if args.summarize_only else parts)
    if args.note:
        for file, (_, covered) in SUMMARIES.items():
            if set(covered) & set(parts):
                results["notes"][file].append(f"- {args.note}")
    if args.summarize_only:  # rewrite the summaries from results.json (after a run was stopped), nothing runs
        json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        return print("\n".join((OUT / f).read_text(encoding="utf-8") for f in write_summary(results)))
    command = "python benchmarks/speech.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:])
    for part in parts:
        methods = [m for m in args.methods.split(",") if m] or PART_METHODS[part]
        if args.quick:
            methods = [m for m in methods if m != "whisper probe"]
        train_all, test = load_dataset(PARTS[part])
        if part == "pauses":
            train_all, test = with_pauses(train_all, 0), with_pauses(test, 1)
        rows, extra = [], {"inner_pauses": inner_pauses(train_all, test)} if part in ("vad", "pauses") else {}
        for seed in range(args.seeds):
            train = draw(train_all, args.per_class, seed)
            for method in methods:
                row = run(method, train, test, seed)
                rows.append(row)
                print(json.dumps({"part": part, **row}), flush=True)
                results["parts"][part] = {"rows": rows, "summary": summarize_part(rows, part), "command": command,
                                          "per_class": args.per_class, "torch_threads": torch.get_num_threads(),
                                          **extra}
                json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
                write_summary(results)
    print("\n".join((OUT / f).read_text(encoding="utf-8") for f in write_summary(results)))


if __name__ == "__main__":
    main()

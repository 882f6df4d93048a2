"""Few-shot benchmark: 5-way 1-shot and 5-shot episodes on Fashion-MNIST held-out classes, EfficientNet-Lite0.

    python benchmarks/few_shot.py [--episodes 600] [--size 32] [--quick]

Protocol: Fashion-MNIST has 10 classes. Meta-training (where a method trains)
sees only the 5 even classes (T-shirt/top, Pullover, Coat, Shirt, Bag) from the
*train* split; test episodes are 5-way on the 5 odd classes (Trouser, Dress,
Sandal, Sneaker, Ankle boot) from the *test* split, so every test class is
unseen. Every method is scored on the same seeded episodes (15 queries per
class), so per-episode accuracies pair across methods. Methods:

* ``protonet`` frozen, cosine and Euclidean: prototypes from frozen ImageNet features; nothing trained.
* ``linear probe``: a logistic regression on each episode's support features
  (:func:`fit_linear_head`, standardised, C = 1: too few shots to choose C).
* ``protonet`` episodic fine-tuning: the backbone fine-tuned on 5-way 5-shot
  episodes of the meta-training classes, then prototypes (cosine).
* ``maml`` ANIL (second order): backbone meta-trained with a head-only inner
  loop; at test a zero head adapts to the support features.
* ``maml`` first-order (full): backbone and head adapt in the inner loop and at
  test. Per-episode adaptation of the whole network is the expensive part, so
  it is scored on the first ``--fomaml-episodes`` episodes only (same episodes
  as the others' first ones); the report says how many.

Controls separate the classifier from the meta-training: the ANIL head
adaptation and the whole-network adaptation run on the plain ImageNet backbone
too (no meta-training). A diagnostic scores 5-shot prototypes on new images of
the meta-training classes, with the frozen and the episodically tuned backbone.

ANIL's inner learning rate is chosen on the meta-training classes (frozen
features, 100 episodes), never on the test classes. The meta-trained runs use
one 5-shot training schedule for both test settings.

Writes ``benchmarks/results/few_shot/{report.md,summary.csv,episodes.csv,few_shot.png}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data import extract_features, load_dataset  # noqa: E402
from transferkit.evaluation.few_shot import evaluate_episodes  # noqa: E402
from transferkit.evaluation.stats import paired_difference  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.strategies.base import ItemDataset, TransferModel, linear_head  # noqa: E402
from transferkit.strategies.few_shot import adapt, zero_head_params  # noqa: E402
from transferkit.strategies.linear_probe import fit_linear_head  # noqa: E402
from transferkit.training import TrainConfig, Trainer  # noqa: E402

OUT = Path(__file__).parent / "results" / "few_shot"
META_CLASSES, TEST_CLASSES = (0, 2, 4, 6, 8), (1, 3, 5, 7, 9)
SHOTS = (1, 5)


def _per_class(data, classes, per_class, seed):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.targets == c), per_class, replace=False) for c in classes])
    return data.subset(np.sort(idx))


def probe_classifier(support, ys, query, n_way):
    head, _ = fit_linear_head("classification", support, ys, C=1.0)
    with torch.no_grad():
        return head(torch.from_numpy(np.asarray(query, np.float32))).argmax(1).numpy()


def anil_classifier(head, steps, lr):
    """Zero head, ``steps`` gradient steps on the support features, predict the queries."""
    def classify(support, ys, query, n_way):
        start = zero_head_params(head, n_way)
        fast = adapt(head, start, torch.from_numpy(support).float(), torch.from_numpy(ys), steps, lr)
        with torch.no_grad():
            return functional_call(head, fast, (torch.from_numpy(query).float(),)).argmax(1).numpy()
    return classify


def full_classifier(model, steps, lr):
    """Zero head, ``steps`` gradient steps of the whole network on the support images (first order)."""
    body = {f"backbone.{n}": p for n, p in model.backbone.named_parameters() if p.requires_grad}

    def classify(support, ys, query, n_way):
        start = {**body, **{f"head.{n}": v for n, v in zero_head_params(model.head, n_way).items()}}
        fast = adapt(model, start, support, torch.from_numpy(ys), steps, lr, first_order=True)
        with torch.no_grad():
            return functional_call(model, {k: v.detach() for k, v in fast.items()}, (query,)).argmax(1).numpy()
    return classify


def meta_train(strategy, backbone, data, epochs, lr, meta_batch=1):
    model = TransferModel(backbone, linear_head(backbone.num_features, 10), "classification", data.label_names)
    history = strategy.meta_train(model, data, Trainer(TrainConfig(epochs=epochs, lr=lr, progress=False)), meta_batch)
    return model, history


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--fomaml-episodes", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--meta-per-class", type=int, default=200)
    ap.add_argument("--pool-per-class", type=int, default=200)
    ap.add_argument("--meta-episodes", type=int, default=100, help="meta-training episodes per trained method")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from summary.csv")
    args = ap.parse_args()
    if args.plot_only:
        import pandas as pd

        return plot(pd.read_csv(OUT / "summary.csv"))
    if args.quick:
        OUT = Path("/tmp/few_shot_quick")
        args.episodes, args.fomaml_episodes, args.meta_episodes, args.meta_per_class, args.pool_per_class = 20, 5, 4, 20, 20
    # One thread: on 2 cores shared with other jobs it ran a 50-image Lite0 step in 0.7 s, two threads in 2.4 s.
    torch.set_num_threads(1)
    t_start = time.time()
    train, test = load_dataset("fashion-mnist")
    meta = _per_class(train, META_CLASSES, args.meta_per_class, seed=0)
    pool = _per_class(test, TEST_CLASSES, args.pool_per_class, seed=0)
    seen = _per_class(test, META_CLASSES, max(20, args.pool_per_class // 2), seed=0)  # new images of the meta-training classes
    names = train.label_names
    timings, results, episode_rows, seen_rows = {}, [], {}, []

    def score(method, rows, classifier=None, distance="cosine", episodes=args.episodes):
        for k in SHOTS:
            t = time.time()
            r = evaluate_episodes(rows, pool.targets, n_way=5, k_shot=k, n_query=15, episodes=episodes, seed=0,
                                  distance=distance, classifier=classifier[k] if isinstance(classifier, dict) else classifier)
            results.append({"method": method, "shots": k, "mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high,
                            "episodes": len(r.accuracies), "eval_s": round(time.time() - t, 1)})
            episode_rows[(method, k)] = r.accuracies
            print(f"{method:32s} {r}", flush=True)

    def score_seen(method, backbone, use_cache=False):
        """Diagnostic: 5-shot cosine prototypes on the meta-training classes' test images."""
        feats = extract_features(backbone, seen, batch_size=100, use_cache=use_cache)
        r = evaluate_episodes(feats, seen.targets, n_way=5, k_shot=5, n_query=15, episodes=200, seed=0)
        seen_rows.append(f"| {method} | {100 * r.mean:.1f} ± {100 * r.half_width:.1f} |")

    # -- frozen features -----------------------------------------------------------------
    t = time.time()
    frozen = load_backbone("efficientnet-lite:0", image_size=args.size)
    pool_feats = extract_features(frozen, pool, batch_size=100)
    meta_feats = extract_features(frozen, meta, batch_size=100)
    timings["frozen features"] = time.time() - t
    score("protonet frozen, cosine", pool_feats)
    score_seen("protonet frozen, cosine", frozen, use_cache=True)
    score("protonet frozen, euclidean", pool_feats, distance="euclidean")
    score("linear probe per episode (frozen)", pool_feats, classifier=probe_classifier)

    # ANIL's inner learning rate per shot setting, chosen on the meta-training classes (frozen features)
    head = linear_head(frozen.num_features, 5)
    grid = {(k, lr): evaluate_episodes(meta_feats, meta.targets, 5, k, 15, episodes=100, seed=1,
                                       classifier=anil_classifier(head, 10, lr)).mean
            for k in SHOTS for lr in (0.03, 0.1, 0.3, 1.0)}
    anil_lr = {k: max((lr for kk, lr in grid if kk == k), key=lambda lr: grid[(k, lr)]) for k in SHOTS}
    print("ANIL inner lr on meta-train classes:", grid, "->", anil_lr, flush=True)
    # control: the same head adaptation on the frozen backbone, no meta-training
    score("head adaptation, frozen (ANIL without meta-training)", pool_feats,
          classifier={k: anil_classifier(head, 10, anil_lr[k]) for k in SHOTS})

    # -- protonet, episodic fine-tuning ------------------------------------------------------
    per_epoch = max(1, args.meta_episodes // 5)
    t = time.time()
    proto = make_strategy("protonet", {"episodic": True, "k_shot": 5, "n_query": 5, "episodes_per_epoch": per_epoch})
    model, hist = meta_train(proto, load_backbone("efficientnet-lite:0", image_size=args.size), meta, 5, 1e-4)
    timings["protonet episodic meta-training"] = time.time() - t
    print("protonet episodic:", hist[-1], flush=True)
    score("protonet fine-tuned (episodic), cosine", extract_features(model.backbone, pool, batch_size=100, use_cache=False))
    score_seen("protonet fine-tuned (episodic), cosine", model.backbone)

    # -- ANIL ----------------------------------------------------------------------------------
    t = time.time()
    anil = make_strategy("maml", {"anil": True, "inner_steps": 5, "inner_lr": anil_lr[5], "k_shot": 5, "n_query": 5,
                                  "episodes_per_epoch": per_epoch, "meta_batch": 2})
    model, hist = meta_train(anil, load_backbone("efficientnet-lite:0", image_size=args.size), meta, 5, 1e-4, 2)
    timings["ANIL meta-training"] = time.time() - t
    print("ANIL:", hist[-1], flush=True)
    feats = extract_features(model.backbone, pool, batch_size=100, use_cache=False)
    score("maml ANIL (second order)", feats, classifier={k: anil_classifier(model.head, 10, anil_lr[k]) for k in SHOTS})

    # -- first-order MAML, whole network -------------------------------------------------------
    fo_lr = 0.01  # 0.1 collapsed to chance when adapting the whole network (a check on 8 episodes)
    control = TransferModel(frozen, linear_head(frozen.num_features, 5), "classification", None).eval()
    images = ItemDataset(pool, frozen.preprocess).tensor
    score("full-network adaptation, no meta-training", images, classifier=full_classifier(control, 5, fo_lr),
          episodes=args.fomaml_episodes)
    t = time.time()
    fomaml = make_strategy("maml", {"first_order": True, "inner_steps": 3, "inner_lr": fo_lr, "k_shot": 5,
                                    "n_query": 5, "episodes_per_epoch": max(1, per_epoch // 2), "meta_batch": 2})
    model, hist = meta_train(fomaml, load_backbone("efficientnet-lite:0", image_size=args.size), meta, 5, 1e-4, 2)
    timings["FOMAML meta-training"] = time.time() - t
    print("FOMAML:", hist[-1], flush=True)
    score("maml first-order (full network)", images, classifier=full_classifier(model, 5, fo_lr),
          episodes=args.fomaml_episodes)
    timings["total"] = time.time() - t_start
    write(results, episode_rows, seen_rows, timings, args, anil_lr, grid, fo_lr, names)


def write(results, episode_rows, seen_rows, timings, args, anil_lr, grid, fo_lr, names) -> None:
    import pandas as pd

    OUT.mkdir(parents=True, exist_ok=True)
    summary = pd.DataFrame(results)
    summary.to_csv(OUT / "summary.csv", index=False)
    long = [{"method": m, "shots": k, "episode": i, "accuracy": a}
            for (m, k), accs in episode_rows.items() for i, a in enumerate(accs)]
    pd.DataFrame(long).to_csv(OUT / "episodes.csv", index=False)
    plot(summary)
    cmd = "python benchmarks/few_shot.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    lines = [f"# Few-shot: 5-way episodes on unseen Fashion-MNIST classes, EfficientNet-Lite0 at {args.size} px", "",
             f"Command: `{cmd}` (2 CPU cores shared with other jobs, torch 1 thread; total {timings['total'] / 60:.1f} min; "
             f"budget 25 min).", "",
             f"Meta-training classes (train split, {args.meta_per_class} per class): "
             f"{', '.join(names[c] for c in META_CLASSES)}. Test classes (test split, pool of {args.pool_per_class} "
             f"per class): {', '.join(names[c] for c in TEST_CLASSES)}. {args.episodes} seeded test episodes, "
             "15 queries per class, the same episodes for every method; mean ± 95% CI (Student t over episodes).", "",
             "| method | 5-way 1-shot | 5-way 5-shot | episodes |", "| --- | --- | --- | --- |"]
    for method, g in summary.groupby("method", sort=False):
        cells = [f"{100 * r.mean:.1f} ± {100 * (r.ci_high - r.ci_low) / 2:.1f}" for r in g.itertuples()]
        lines.append(f"| {method} | {' | '.join(cells)} | {g['episodes'].iloc[0]} |")
    lines += ["", "Paired differences over the same episodes (percentage points, 95% CI):", ""]
    base = "protonet frozen, cosine"
    for method in summary["method"].unique():
        if method == base:
            continue
        for k in SHOTS:
            a, b = episode_rows[(method, k)], episode_rows[(base, k)][:len(episode_rows[(method, k)])]
            d, lo, hi = paired_difference(a, b)
            lines.append(f"- {method} − {base}, {k}-shot: {100 * d:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})")
    lines += ["", "Effect of meta-training (the same adaptation with and without it, paired):", ""]
    for meta_method, ctrl in (("protonet fine-tuned (episodic), cosine", "protonet frozen, cosine"),
                              ("maml ANIL (second order)", "head adaptation, frozen (ANIL without meta-training)"),
                              ("maml first-order (full network)", "full-network adaptation, no meta-training")):
        for k in SHOTS:
            d, lo, hi = paired_difference(episode_rows[(meta_method, k)], episode_rows[(ctrl, k)])
            lines.append(f"- {meta_method} − {ctrl}, {k}-shot: {100 * d:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})")
    lines += ["", f"Diagnostic: the meta-training classes, new images (test split, {max(20, args.pool_per_class // 2)} per class), "
              "5-way 5-shot cosine prototypes, 200 episodes:", "", "| backbone | 5-way 5-shot |", "| --- | --- |",
              *seen_rows]
    lines += ["", "Settings: meta-trained methods train on 5-way 5-shot 5-query episodes of the meta-training classes, "
              f"{args.meta_episodes} episodes each (FOMAML {max(1, args.meta_episodes // 5 // 2) * 5}), AdamW lr 1e-4, "
              "BatchNorm statistics frozen. "
              f"ANIL: 5 inner steps in training, 10 at test, from a zero head; inner lr per shot setting "
              f"{anil_lr} (training uses the 5-shot one), chosen on the meta-training classes with frozen features "
              f"(accuracy by (shots, lr): {', '.join(f'{k}: {100 * v:.1f}' for k, v in grid.items())}). "
              f"FOMAML: 3 inner steps in training, 5 at test, inner lr {fo_lr}; scored on the first "
              f"{args.fomaml_episodes} episodes only (whole-network adaptation per episode is the cost).", "",
              "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    (OUT / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot(summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["method"].unique())[::-1]  # first method on top
    fig, ax = plt.subplots(figsize=(9, 5))
    height = 0.38
    for j, k in enumerate(SHOTS):
        g = summary[summary["shots"] == k].set_index("method").loc[methods]
        y = np.arange(len(methods)) + (0.5 - j) * height
        ax.barh(y, 100 * g["mean"], height, xerr=100 * (g["ci_high"] - g["ci_low"]) / 2, capsize=3,
                label=f"{k}-shot")
    ax.axvline(20, color="grey", ls=":", lw=1, label="chance (5-way)")
    labels = [f"{m} [{int(n)} episodes]" for m, n in
              summary.drop_duplicates("method").set_index("method").loc[methods, "episodes"].items()]
    ax.set_yticks(np.arange(len(methods)), labels, fontsize=8)
    ax.set_xlabel("accuracy on unseen classes (%), mean ± 95% CI")
    ax.set_title("5-way episodes, unseen Fashion-MNIST classes, Lite0 32 px", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "few_shot.png", dpi=120)


if __name__ == "__main__":
    main()

"""Dynamic int8 quantisation of an exported model: accuracy change and size, on real data, 3 seeds.

    python benchmarks/export_int8.py [--seeds 3]

For each seed: EfficientNet-Lite0 (ImageNet weights) fine-tuned 5 epochs on 50 Fashion-MNIST images
per class at 64 px, exported to ONNX with ``quantize=True``; the float and int8 ONNX models are then
evaluated on the same 1,000 fixed test images, with transferkit's operator set (MatMul, Gemm) and
with every op ONNX Runtime quantises by default (Conv included), side by side.
Writes ``benchmarks/results/export_int8/{runs.csv,summary.md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

import transferkit as tk
from transferkit.evaluation import mean_ci
from transferkit.export.onnx_export import export_bundle, quantization_accuracy

OUT = Path(__file__).parent / "results" / "export_int8"


def quantize_all(export_dir: Path, out: Path) -> Path:
    """A copy of the export whose int8 model quantises every op ONNX Runtime supports (its default)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(export_dir, out)
    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            bundle = Path(work) / f"b{seed}"
            tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", labels_per_class=50, image_size=64, epochs=5,
                   val_fraction=0.0, seed=seed, out=bundle, report=False, progress=False, max_test=200)
            onnx = export_bundle(bundle, Path(work) / f"onnx{seed}", quantize=True)
            for ops, target in (("MatMul, Gemm (transferkit)", onnx), ("every supported op, Conv included",
                                                                       quantize_all(onnx, Path(work) / f"all{seed}"))):
                q = quantization_accuracy(target, "fashion-mnist", max_items=1000)
                rows.append({"seed": seed, "ops": ops, **q, "float_mb": (target / "model.onnx").stat().st_size / 1e6,
                             "int8_mb": (target / "model.int8.onnx").stat().st_size / 1e6})
                print(rows[-1], flush=True)
    runs = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    runs.to_csv(OUT / "runs.csv", index=False)

    def ci(g, col, scale=100.0):
        m, lo, hi = mean_ci(scale * g[col])
        return f"{m:.2f} ± {(hi - lo) / 2:.2f}"

    lines = ["# Dynamic int8 quantisation of the ONNX export", "",
             f"`python benchmarks/export_int8.py --seeds {args.seeds}`: EfficientNet-Lite0 fine-tuned on 50 "
             "Fashion-MNIST images per class at 64 px (5 epochs), float vs int8 ONNX on 1,000 fixed test images; "
             "mean ± 95% CI over seeds. Two operator sets for ONNX Runtime's `quantize_dynamic`, side by side.", "",
             "| quantised ops | float accuracy (%) | int8 accuracy (%) | change (points) | same prediction (%) | "
             "size float → int8 (MB) |", "| --- | --- | --- | --- | --- | --- |"]
    for ops, g in runs.groupby("ops", sort=False):
        lines.append(f"| {ops} | {ci(g, 'float')} | {ci(g, 'int8')} | {ci(g, 'change')} | {ci(g, 'agreement')} | "
                     f"{g['float_mb'].mean():.1f} → {g['int8_mb'].mean():.1f} |")
    text = "\n".join(lines) + "\n"
    (OUT / "summary.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    sys.exit(main())

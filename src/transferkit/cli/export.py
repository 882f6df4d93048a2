"""``transferkit export``: a bundle as ONNX or TorchScript, with its preprocessing, labels and a parity check."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import console, examples


def register(app: typer.Typer) -> None:
    app.command("export", epilog=examples(
        'transferkit export runs/fmnist --format onnx --quantize \\',
        '    --out runs/fmnist-onnx',
        'transferkit export runs/lora --format peft --out runs/lora-peft'))(export_command)


def export_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `transferkit fit`."),
    out: Path = typer.Option(..., help="Directory to write (refused if it exists, unless --overwrite)."),
    format: str = typer.Option("onnx", "--format", help="onnx (for onnxruntime), torchscript, or peft (an adapter "
                                                        "bundle's adapter in Hugging Face PEFT's format)."),
    quantize: bool = typer.Option(False, "--quantize", help="ONNX: also write model.int8.onnx (dynamic int8 quantisation)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory at --out."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's own; below 18 uses the "
                                                   "TorchScript-based exporter)."),
    eval_data: Optional[str] = typer.Option(None, help="With --quantize: labelled data (a built-in name uses its test "
                                                       "split) on which to measure the int8 model's metric change."),
) -> None:
    """Export the model of BUNDLE to OUT, with a dynamic batch size, and check it against PyTorch."""
    from transferkit.export.onnx_export import export_bundle, read_export

    if eval_data is not None and not quantize:
        raise typer.BadParameter("--eval-data measures the int8 model: give --quantize too.")
    if format == "peft":
        from transferkit.export.peft_interop import export_peft_adapter

        if quantize or opset is not None:
            raise typer.BadParameter("--quantize and --opset apply to ONNX export, not --format peft.")
        path = export_peft_adapter(bundle, out, overwrite=overwrite)
        console.print(f"wrote the adapter of [bold]{bundle}[/bold] in PEFT's format to [bold]{path}[/bold]: "
                      f"peft.PeftModel.from_pretrained(base_model, '{path}') loads it", highlight=False)
        return
    path = export_bundle(bundle, out, format=format, quantize=quantize, overwrite=overwrite, opset=opset)
    info = read_export(path)
    opset_note = f", opset {info['opset']}" if info.get("opset") else ""
    console.print(f"exported [bold]{bundle}[/bold] to [bold]{path}[/bold] ({info['format']}{opset_note}; "
                  f"{info['exporter']})", highlight=False)
    for name, size in info["sizes"].items():
        console.print(f"  {name}  {size / 1e6:.2f} MB", highlight=False)
    parity = info["parity"]
    what = "logit" if [o["name"] for o in info["outputs"]] == ["logits"] else "output"
    console.print(f"parity with PyTorch: max |{what} difference| {parity['max_abs_diff']:.2e} "
                  f"(tolerance {parity['tolerance']:.0e}, {parity['inputs']} inputs)", highlight=False)
    if parity.get("predictions"):
        console.print(f"predictions (postprocessed outside the graph): {parity['predictions']['summary']}",
                      highlight=False)
    if info.get("quantization"):
        console.print(f"int8 model: max |{what} difference| {info['quantization']['max_abs_diff']:.2e} "
                      "(reported, not enforced)", highlight=False)
    if eval_data is not None:
        from transferkit.export.onnx_export import quantization_accuracy

        q = quantization_accuracy(path, eval_data)
        agree = f", same prediction on {100 * q['agreement']:.1f}% of items" if q["agreement"] is not None else ""
        console.print(f"int8 {q['metric']} on {q['n']} items of {eval_data}: {q['int8']:.4f} vs {q['float']:.4f} "
                      f"float ({q['change']:+.4f}{agree})", highlight=False)

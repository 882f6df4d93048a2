"""``transferkit merge``: fold an adapter bundle (lora, ia3, conv adapters) into a plain bundle for export."""
from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli.common import console, examples


def register(app: typer.Typer) -> None:
    app.command("merge", epilog=examples(
        "transferkit merge runs/debian-lora --out runs/debian-merged",
        "transferkit export runs/debian-merged --format onnx --out runs/debian-onnx"))(merge_command)


def merge_command(
    bundle: Path = typer.Argument(..., help="Adapter bundle written by `transferkit fit --strategy lora|ia3|adapter`."),
    out: Path = typer.Option(..., help="Bundle directory to write (refused if it exists, unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle at --out."),
    hf: bool = typer.Option(False, "--hf", help="Text generation: write a plain Hugging Face model folder "
                                                 "(AutoModelForCausalLM.from_pretrained) instead of a bundle."),
) -> None:
    """Fold the adapter of BUNDLE into the base weights; OUT is a plain bundle (ONNX export, serving)."""
    from transferkit.export.peft_interop import bundle_sizes, merge_bundle

    path = merge_bundle(bundle, out, overwrite=overwrite, hf=hf)
    if hf:
        console.print(f"merged [bold]{bundle}[/bold] into the Hugging Face folder [bold]{path}[/bold]", highlight=False)
        return
    before, after = bundle_sizes(bundle), bundle_sizes(path)
    console.print(f"merged [bold]{bundle}[/bold] ({before['weights_bytes'] / 1e6:.2f} MB of weights"
                  f"{', adapter only' if before['adapter_only'] else ''}) into [bold]{path}[/bold] "
                  f"({after['weights_bytes'] / 1e6:.2f} MB)", highlight=False)

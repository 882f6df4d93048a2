"""``transferkit predict``: labels for image or audio paths, or texts."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli.common import console, examples


def register(app: typer.Typer) -> None:
    app.command("predict", epilog=examples(
        'transferkit predict runs/fmnist boot.png shirt.png --top 3',
        'transferkit predict runs/pii --json "Mail Ada at ada@example.org."',
        'transferkit predict runs/seg street.jpg --masks masks/'))(predict_command)


def predict_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `transferkit fit`."),
    items: list[str] = typer.Argument(..., help="Image or audio file paths (image, audio models) or texts (text models)."),
    top: int = typer.Option(1, help="Show the top K classes with probabilities."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, max=4096,
                                       help="Text generation: at most this many new tokens (default: the bundle's)."),
    temperature: float = typer.Option(None, min=0.0, max=10.0,
                                      help="Text generation: sampling temperature (0: greedy; default: the bundle's)."),
    masks: Path = typer.Option(None, "--masks", help="Segmentation: write each predicted mask as a PNG "
                                                     "(pixel value = class index) to this folder, STEM.png; instance "
                                                     "segmentation: one PNG per object (255 = the object, 0 = not), "
                                                     "STEM-K.png for the K-th object listed, instead of its RLE."),
) -> None:
    """Predict labels for ITEMS with the bundle at BUNDLE."""
    import numpy as np

    from transferkit.errors import ConfigError
    from transferkit.export.bundle import load
    from transferkit.tasks import get_task

    predictor = load(bundle)
    changes = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature)) if v is not None}
    if changes:
        if predictor.task != "text-generation":
            raise ConfigError("--max-new-tokens and --temperature apply to text-generation bundles; "
                              f"{bundle} is {predictor.task}.")
        predictor.model.generation = {**(predictor.model.generation or {}), **changes}
    labels = [_masks_out(p, item, masks) for p, item in zip(predictor.predict(items), items)]
    probs = predictor.outputs(items) if get_task(predictor.task).single_label else None
    for i, item in enumerate(items):
        rec = {"item": item, "prediction": labels[i]}
        if probs is not None:
            order = np.argsort(-probs[i])[:top]
            rec["top"] = [[predictor.label_names[j], round(float(probs[i][j]), 4)] for j in order]
        console.print(json.dumps(rec) if as_json else f"{item}\t{labels[i]}"
                      + ("" if probs is None or top <= 1 else "\t" + ", ".join(f"{n} {p:.3f}" for n, p in rec["top"])),
                      highlight=False, soft_wrap=True)


def _masks_out(prediction, item: str, folder: Path | None):
    """A segmentation prediction's mask array becomes the PNG written to ``folder`` (or is left out); with a
    folder, each object's RLE mask of an instance segmentation becomes a PNG of its own (:func:`_objects_out`)."""
    import numpy as np

    if isinstance(prediction, list) and folder is not None:
        return _objects_out(prediction, item, folder)
    if not (isinstance(prediction, dict) and isinstance(prediction.get("mask"), np.ndarray)):
        return prediction
    rest = {k: v for k, v in prediction.items() if k != "mask"}
    if folder is None:
        return rest
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (Path(item).stem + ".png")
    Image.fromarray(prediction["mask"].astype(np.uint8)).save(path)
    return {**rest, "mask": str(path)}


def _objects_out(objects: list, item: str, folder: Path) -> list:
    """Objects whose ``mask`` is COCO RLE (instance segmentation) get it written as ``folder/STEM-K.png`` (K from 1,
    in the listed order; 255 inside the object, 0 outside, in the image's own pixels) and the path in its place."""
    import numpy as np
    from PIL import Image

    if not any(isinstance(o, dict) and isinstance(o.get("mask"), dict) for o in objects):
        return objects  # detection: boxes only
    from transferkit.tasks.instance_segmentation import decode_mask

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, obj in enumerate(objects, start=1):
        path = folder / f"{Path(item).stem}-{k}.png"
        Image.fromarray((decode_mask(obj["mask"]) > 0).astype(np.uint8) * 255).save(path)
        out.append({**obj, "mask": str(path)})
    return out

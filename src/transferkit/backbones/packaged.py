"""Files that Python packages ship (model weights), found without importing the package."""
from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path


def package_file(module: str, relative: str | Path) -> Path | None:
    """``relative`` inside the installed package ``module`` if that file exists, else ``None``.

    The package is located (``importlib.util.find_spec``), never imported: some import heavy or unwanted
    things at import time (llama_cpp, or torch's thread count set to 1).

    Example:
        >>> package_file("no_such_package_here", "model.bin") is None
        True
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / relative).is_file():
            return Path(location) / relative
    return None


def load_tensors(path: Path):
    """What ``path`` holds, read with ``torch.load(weights_only=True)`` (tensors and plain containers only).

    Raises:
        MissingWeightsError: the file cannot be read that way (a pickled object, a truncated file, ...).
    """
    import torch

    from transferkit.errors import MissingWeightsError

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": older packaged files, read fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingWeightsError(f"{path} cannot be read as tensors with torch.load(weights_only=True): "
                                  f"{first[:200]}. transferkit never unpickles code.") from None

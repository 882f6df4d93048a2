"""Files that Python packages ship (model weights), found without importing the package."""
from __future__ import annotations

import importlib.util
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

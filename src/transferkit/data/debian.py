"""Debian package descriptions: the snapshot's location, its test split rule and its text fields.

Read by the built-in ``debian-packages`` and ``debian-synopsis`` data sets (:mod:`transferkit.data.builtin`)
and by the script that rebuilds the packaged subset (:mod:`transferkit.data.make_debian_subset`).
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.errors import ConfigError, DataError

DEBIAN_SECTIONS = ("games", "science", "sound", "graphics", "mail", "editors", "database", "video", "electronics",
                   "hamradio", "math", "web", "fonts", "text")
DEBIAN_TEST_PER_SECTION = 60
DEBIAN_FULL_NAME = "debian-packages.csv.gz"
DEBIAN_SUBSET = Path(__file__).parent / "resources" / "debian-packages-subset.csv.gz"
DEBIAN_COLUMNS = ["package", "section", "synopsis", "description"]


def find_debian_snapshot() -> Path | None:
    """The full snapshot: ``$TRANSFERKIT_SHARED_DATA``, else ``../shared/data/`` from the current
    directory, else ``../shared/data/`` beside the repository holding this package; ``None`` if absent."""
    candidates = []
    if os.environ.get("TRANSFERKIT_SHARED_DATA"):
        candidates.append(Path(os.environ["TRANSFERKIT_SHARED_DATA"]) / DEBIAN_FULL_NAME)
    candidates.append(Path.cwd().parent / "shared" / "data" / DEBIAN_FULL_NAME)
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / DEBIAN_FULL_NAME)
    return next((p for p in candidates if p.is_file()), None)


def debian_test_rank(package: str) -> str:
    """Sort key that picks test items: a stable hash of the package name, independent of the file read."""
    return hashlib.sha256(f"transferkit-debian-test/{package}".encode()).hexdigest()


def debian_test_mask(frame: pd.DataFrame, per_section: int = DEBIAN_TEST_PER_SECTION) -> np.ndarray:
    """True for the ``per_section`` packages of each section with the smallest :func:`debian_test_rank`.

    Any file holding those packages (the full snapshot or the shipped
    subset) gives the same test split.
    """
    rank = frame["package"].map(debian_test_rank)
    order = rank.groupby(frame["section"]).rank(method="first")
    return (order <= per_section).to_numpy()


@functools.lru_cache(maxsize=4)
def _read_debian(path: str, mtime_ns: int) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the Debian package snapshot {path}: {exc}") from None
    missing = [c for c in DEBIAN_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)}. Columns present: {', '.join(frame.columns)}.")
    return frame[DEBIAN_COLUMNS].sort_values(["section", "package"], kind="stable").reset_index(drop=True)


def _debian_frame(snapshot: str) -> tuple[pd.DataFrame, Path]:
    choices = ("auto", "full", "subset")
    if snapshot not in choices:
        raise ConfigError(f"The 'snapshot' option of debian-packages must be one of {', '.join(choices)}. "
                          f"Got {snapshot!r} instead.")
    full = find_debian_snapshot() if snapshot != "subset" else None
    if snapshot == "full" and full is None:
        raise DataError(f"The full Debian snapshot {DEBIAN_FULL_NAME} was not found in $TRANSFERKIT_SHARED_DATA "
                        f"or ../shared/data/. Set TRANSFERKIT_SHARED_DATA to its folder, or use snapshot='subset'.")
    path = full or DEBIAN_SUBSET
    if not path.is_file():
        raise DataError(f"Debian package subset not found: {path} (the installed package is incomplete).")
    return _read_debian(str(path), path.stat().st_mtime_ns), path


def debian_text(synopsis: str, description: str, field: str = "both") -> str:
    """The text of one package: ``"synopsis. description"``, or one of the two."""
    if field == "synopsis":
        return synopsis
    if field == "description":
        return description
    return f"{synopsis.rstrip('. ')}. {description}"


def _check_sections(frame: pd.DataFrame, sections: Sequence[str], path: Path) -> None:
    counts = frame["section"].value_counts()
    for s in sections:
        if s not in counts:
            raise DataError(f"Unknown Debian section '{s}' in {path.name}. Available: "
                            f"{', '.join(sorted(counts.index))}.")
        if counts[s] <= DEBIAN_TEST_PER_SECTION:
            raise DataError(f"Debian section '{s}' has {counts[s]} packages in {path.name}; it needs more than "
                            f"{DEBIAN_TEST_PER_SECTION} (that many go to the test set).")

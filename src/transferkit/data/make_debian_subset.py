"""Build the Debian package subset shipped in ``resources/`` from the full snapshot.

The subset keeps, for each of the 14 topical sections, exactly the
:data:`~transferkit.data.debian.DEBIAN_TEST_PER_SECTION` test packages that
the loader picks from the full snapshot (the smallest stable hashes of the
package names, :func:`~transferkit.data.debian.debian_test_mask`), plus a
seeded random draw of up to ``TRAIN_PER_SECTION`` of the remaining packages.
So ``load_dataset("debian-packages")`` gives the same test split from either
file. The output is deterministic: the same input gives the same bytes
(gzip with no timestamp or file name, rows sorted by section and package).

Usage:
    python -m transferkit.data.make_debian_subset /path/to/debian-packages.csv.gz [OUT]
"""
from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.debian import (DEBIAN_COLUMNS, DEBIAN_SECTIONS, DEBIAN_SUBSET, debian_test_mask,
                                      find_debian_snapshot)

TRAIN_PER_SECTION = 240
SEED = 0


def build_subset(full: pd.DataFrame, train_per_section: int = TRAIN_PER_SECTION, seed: int = SEED) -> pd.DataFrame:
    """The subset rows: all test packages plus a seeded draw of training packages per section.

    Args:
        full: the full snapshot (columns package, section, synopsis, description).
        train_per_section: training packages kept per section (fewer where a section has fewer).
        seed: seed of the draw; sections are visited in sorted order, packages sorted by name.
    """
    frame = full[full["section"].isin(DEBIAN_SECTIONS)][DEBIAN_COLUMNS]
    frame = frame.sort_values(["section", "package"], kind="stable").reset_index(drop=True)
    is_test = debian_test_mask(frame)
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(is_test)]
    for section in sorted(DEBIAN_SECTIONS):
        pool = np.flatnonzero((frame["section"] == section).to_numpy() & ~is_test)
        keep.append(np.sort(rng.permutation(pool)[:train_per_section]))
    return frame.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def write_csv_gz(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as a reproducible gzipped CSV (no timestamp in the gzip header)."""
    text = frame.to_csv(index=False, lineterminator="\n")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    path.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", nargs="?", help="the full debian-packages.csv.gz (default: found as the loader does)")
    parser.add_argument("out", nargs="?", default=str(DEBIAN_SUBSET), help="output file")
    args = parser.parse_args(argv)
    source = Path(args.full) if args.full else find_debian_snapshot()
    if source is None or not source.is_file():
        raise SystemExit("The full snapshot debian-packages.csv.gz was not found; pass its path.")
    full = pd.read_csv(source, dtype=str, keep_default_na=False)
    subset = build_subset(full)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_gz(subset, out)
    counts = subset["section"].value_counts().sort_index()
    print(f"{out}: {len(subset)} packages, {out.stat().st_size / 1024:.0f} KiB")
    print(", ".join(f"{s} {n}" for s, n in counts.items()))


if __name__ == "__main__":
    main()

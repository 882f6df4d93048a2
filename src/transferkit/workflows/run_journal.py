"""Resume at run granularity for workflows made of many runs: a journal beside ``--out``.

``compare(out="runs/c")`` records every finished run in ``runs/c.runs/runs.jsonl`` as it finishes,
under the lock ``runs/c.runs.lock``, with the settings of the whole comparison in ``settings.json``.
After a crash or a kill, ``compare(..., resume=True)`` (``--resume``) skips the recorded runs and
trains the rest; the report is the one an uninterrupted comparison writes. A resume whose settings
differ is refused, naming them; a recorded run whose training data no longer has the same
fingerprint is refused too. Without ``resume``, a journal left there is refused unless
``overwrite``. The journal is removed once the report is written.

The same journal serves ``rank`` (a run: one candidate's scores, or one architecture's random-init
reference), ``continual`` (one learner over one seed's whole stream) and ``multitask`` (one model
trained: a seed's multi-task model, or one task alone); :func:`map_runs` is the loop they share.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from transferkit.errors import ConfigError
from transferkit.export.output_lock import output_lock
from transferkit.training.checkpoint import setting_differences

__all__ = ["RunJournal", "journal_path", "map_runs", "run_journal"]

JOURNAL_SUFFIX = ".runs"
_README = """\
This folder records the finished runs of an unfinished `transferkit {command}` writing {out}. It is not its report.

To go on after a crash or a kill, run the same command again with --resume (Python: resume=True): the
runs recorded in runs.jsonl are not trained again. A resume with other settings is refused. The folder
is removed once the report is written; to start over instead, rerun with --overwrite (or delete it).
"""


def journal_path(out: str | Path) -> Path:
    """The journal folder of the output folder ``out``: ``OUT.runs`` beside it."""
    out = Path(out)
    return out.with_name(out.name + JOURNAL_SUFFIX)


class RunJournal:
    """The finished runs of one comparison, by key; :meth:`record` appends one and syncs it to disk."""

    def __init__(self, folder: Path | None, rows: dict[str, dict] | None = None):
        self.folder, self.rows = folder, dict(rows or {})

    def get(self, key: str, fingerprint: str) -> dict | None:
        """The recorded row of run ``key``, if its training data had ``fingerprint``; refuses other data."""
        entry = self.rows.get(key)
        if entry is None:
            return None
        if entry["fingerprint"] != fingerprint:
            raise ConfigError(f"Cannot resume from {self.folder}: run {key} was recorded on training data "
                              f"{entry['fingerprint']}, and the same draw is now {fingerprint} (the data changed). "
                              "Rerun with overwrite=True (--overwrite) to start over.")
        return entry["row"]

    def record(self, key: str, fingerprint: str, row: dict) -> None:
        self.rows[key] = {"fingerprint": fingerprint, "row": row}
        if self.folder is None:
            return
        with open(self.folder / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "fingerprint": fingerprint, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _read(folder: Path) -> tuple[dict, dict[str, dict]]:
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    rows = {}
    path = folder / "runs.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed while writing it: that run trains again
                continue
            rows[entry["key"]] = {"fingerprint": entry["fingerprint"], "row": entry["row"]}
    return settings, rows


@contextmanager
def run_journal(out: str | Path | None, settings: dict, *, command: str, resume: bool,
                overwrite: bool) -> Iterator[RunJournal]:
    """The journal of a many-run workflow writing ``out`` (in memory only without ``out``).

    The folder is removed when the block finishes (the report is written by then) and kept when it raises.

    Raises:
        ConfigError: ``resume`` without ``out``; a journal there without ``resume`` or ``overwrite``; a resume
            whose settings differ (the message names them).
        BundleError: another live run holds the journal's lock.
    """
    if out is None:
        if resume:
            raise ConfigError(f"resume=True (--resume) needs out: {command} records its finished runs beside its "
                              "report.")
        yield RunJournal(None)
        return
    folder = journal_path(out)
    with output_lock(folder):
        rows: dict[str, dict] = {}
        if (folder / "settings.json").exists():
            old, rows = _read(folder)
            if not resume and not overwrite:
                raise ConfigError(f"{folder} holds {len(rows)} finished runs of an interrupted {command}. Pass "
                                  "resume=True (--resume) to go on from them, or overwrite=True (--overwrite) to "
                                  "start over.")
            if resume:
                differences = setting_differences(old, settings)
                if differences:
                    raise ConfigError(f"Cannot resume from {folder}: the settings differ from the interrupted "
                                      f"{command}'s: {'; '.join(differences)}. Rerun with the same settings, or "
                                      "with overwrite=True (--overwrite) to start over.")
            else:
                shutil.rmtree(folder)
                rows = {}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(settings, indent=1, default=str), encoding="utf-8")
        (folder / "README.txt").write_text(_README.format(command=command, out=out), encoding="utf-8")
        yield RunJournal(folder, rows)
        shutil.rmtree(folder, ignore_errors=True)


def map_runs(engine, fn: Callable[..., dict], runs: Sequence[tuple[str, str, tuple]], journal: RunJournal, *,
             on_row: Callable[[dict], None] | None = None,
             done: Callable[[dict], bool] = lambda row: True) -> list[dict]:
    """``[fn(*job) for key, fingerprint, job in runs]``: the runs recorded in ``journal`` read back, the rest run.

    The runs not recorded go to ``engine`` (:mod:`transferkit.workflows.engine`); each is recorded in this
    process as it finishes, before ``on_row`` sees it. A row for which ``done(row)`` is false did not do its
    work (a candidate skipped for time, one that could not load) and is not recorded: a resume runs it again.
    Every row is returned as the journal holds it (through JSON), so a resumed and an uninterrupted workflow
    return the same rows.

    Raises:
        ConfigError: a recorded run whose training data has another fingerprint now (:meth:`RunJournal.get`).
    """
    rows = [journal.get(key, fingerprint) for key, fingerprint, _ in runs]
    todo = [i for i, row in enumerate(rows) if row is None]
    if on_row is not None:
        for row in rows:
            if row is not None:
                on_row(row)

    def finished(j: int, row: dict) -> None:  # in this process, as each run finishes: journal it first
        key, fingerprint, _ = runs[todo[j]]
        row = json.loads(json.dumps(row))
        if done(row):
            journal.record(key, fingerprint, row)
        rows[todo[j]] = row
        if on_row is not None:
            on_row(row)

    engine.map(fn, [runs[i][2] for i in todo], on_result=finished)
    return rows

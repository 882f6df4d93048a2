"""One writer per output folder, and unfinished outputs that say what they are.

Every writer of an output folder (a bundle, an export, a merge, a multi-task or
continual run) goes through :func:`atomic_dir`:

1. ``OUT.lock`` is created beside ``OUT`` with ``O_CREAT | O_EXCL`` and holds the
   writer's PID, host and start time. A second writer gets a :class:`BundleError`
   naming that PID; a lock whose PID no longer runs on this host is taken over,
   with a warning.
2. Under the lock, ``OUT`` is checked (it must not exist unless ``overwrite``) and
   the unfinished folders of dead writers are removed, with a warning.
3. The run writes into ``OUT.partial-PID``, which holds ``PARTIAL.txt`` saying that
   the run did not finish; :func:`check_not_partial` (and so ``transferkit.load``)
   refuses such a folder.
4. As the last step the marker is removed and the folder renamed to ``OUT``; an
   ``OUT`` that appeared meanwhile is only replaced with ``overwrite``.

Example:
    >>> with atomic_dir("runs/out") as tmp:         # doctest: +SKIP
    ...     (tmp / "result.json").write_text("{}")
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import BundleError, TransferkitWarning

LOCK_SUFFIX = ".lock"
PARTIAL_INFIX = ".partial-"
PARTIAL_MARKER = "PARTIAL.txt"
#: a lock whose content cannot be read is only judged stale after this many seconds (its writer may be mid-write).
UNREADABLE_GRACE_S = 30.0
_PARTIAL_NAME = re.compile(r".+\.partial(-\d+)?|\..+\.partial")  # 'OUT.partial-PID', and '.OUT.XXXX.partial' (<= 0.1)
_HOST = socket.gethostname()


def lock_path(out: str | Path) -> Path:
    """The lock file of the output folder ``out``: ``OUT.lock`` beside it."""
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


def is_partial_name(name: str) -> bool:
    """Whether a folder name is an unfinished output's (``OUT.partial-PID``, or the hidden ``.OUT.XXXX.partial``)."""
    return _PARTIAL_NAME.fullmatch(name) is not None


def check_not_partial(path: str | Path) -> None:
    """Refuse a folder left by a run that did not finish (it holds ``PARTIAL.txt`` or has a ``.partial`` name).

    Raises:
        BundleError: names the folder and how to get a complete output.
    """
    path = Path(path)
    if is_partial_name(path.name) or (path / PARTIAL_MARKER).exists():
        raise BundleError(f"{path} is an unfinished output, not a usable bundle: the run writing it was stopped or "
                          "crashed before its last step (see its PARTIAL.txt). Run the command again with the same "
                          "output folder; the rerun removes this folder.")


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output lock, as its lock file says (``pid`` is None when the file cannot be read)."""

    pid: int | None
    host: str
    started: str
    raw: bytes
    age_s: float

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process (its lock file cannot be read)"
        return f"PID {self.pid} on {self.host}, started {self.started}"

    def is_stale(self) -> bool:
        """True when the holder is known to be gone: its PID does not run on this host."""
        if self.pid is None:
            return self.age_s > UNREADABLE_GRACE_S
        return self.host == _HOST and not pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a PID owned by another user counts as alive)."""
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def read_holder(lock: Path) -> LockHolder | None:
    """The holder of ``lock``, or None when there is no lock file."""
    try:
        raw = lock.read_bytes()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
        pid = info["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError
        return LockHolder(pid, str(info.get("host", "?")), str(info.get("started", "?")), raw, age)
    except (ValueError, KeyError, TypeError):
        return LockHolder(None, "?", "?", raw, age)


def _busy(out: Path, lock: Path, holder: LockHolder) -> BundleError:
    return BundleError(f"Output {out} is being written by another run ({holder.describe()}; lock file {lock}). Wait "
                       f"for it to finish or choose another output folder; if that run is gone, delete {lock}.")


def check_writable(out: str | Path, overwrite: bool) -> Path:
    """Refuse early (before any training) an output another run is writing, or an existing one without ``overwrite``.

    :func:`atomic_dir` checks again under the lock: this early check only saves a wasted run.
    """
    out = Path(out)
    holder = read_holder(lock_path(out))
    if holder is not None and not holder.is_stale():
        raise _busy(out, lock_path(out), holder)
    return _check_target(out, overwrite)


def _check_target(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise BundleError(f"Output {out} already exists; pass overwrite=True (--overwrite) to replace it.")
    if out.exists() and not out.is_dir():
        raise BundleError(f"Output {out} exists and is not a directory.")
    return out


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold ``OUT.lock`` for the block: refuse a second writer, take over the lock of a dead one.

    Raises:
        BundleError: another live process holds the lock (the message names its PID).
    """
    out = Path(out)
    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = _acquire(out, lock)
    try:
        yield lock
    finally:
        try:  # never delete a lock that is no longer ours
            if lock.read_bytes() == mine:
                lock.unlink()
        except FileNotFoundError:
            pass


def _acquire(out: Path, lock: Path) -> bytes:
    mine = json.dumps({"pid": os.getpid(), "host": _HOST, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "out": str(out)}).encode()
    for attempt in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(lock)
            if holder is None:
                continue  # released in between: try again
            if not holder.is_stale():
                if holder.pid is None and attempt < 4:  # its writer may be writing it right now
                    time.sleep(0.1)
                    continue
                raise _busy(out, lock, holder) from None
            _take_over(lock, holder)
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(mine)
        return mine
    raise BundleError(f"Could not lock the output {out}: its lock file {lock} keeps changing hands. Is another run "
                      "writing the same folder?")


def _take_over(lock: Path, holder: LockHolder) -> None:
    """Remove the stale ``lock``, unless a live writer replaced it since it was read (then put that one back)."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(lock, aside)  # atomic: of several processes taking over, one moves the file
    except FileNotFoundError:
        return
    if aside.read_bytes() != holder.raw:  # a new writer's lock, taken between our read and rename
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
        aside.unlink()
        return
    aside.unlink()
    warnings.warn(f"Taking over the lock {lock} left by {holder.describe()}, which is no longer running.",
                  TransferkitWarning, stacklevel=5)


def _remove_stale_partials(out: Path) -> None:
    """Remove the unfinished folders of ``out`` left by dead writers (called under the lock), saying so."""
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.iterdir()):
        name = p.name
        if not p.is_dir() or p.is_symlink():
            continue
        if name.startswith(out.name + PARTIAL_INFIX) and name[len(out.name + PARTIAL_INFIX):].isdigit():
            pid = int(name[len(out.name + PARTIAL_INFIX):])
            if pid != os.getpid() and pid_alive(pid):
                continue
            who = f"PID {pid}, which is no longer running"
        elif name.startswith(f".{out.name}.") and name.endswith(".partial"):
            who = "an earlier transferkit version"
        else:
            continue
        shutil.rmtree(p, ignore_errors=True)
        warnings.warn(f"Removed the unfinished output {p} left by {who}.", TransferkitWarning, stacklevel=5)


def _marker_text(out: Path) -> str:
    return (f"This folder is an unfinished transferkit output, not a usable bundle.\n\n"
            f"The run writing {out} (PID {os.getpid()} on {_HOST}, started {time.strftime('%Y-%m-%d %H:%M:%S')}) "
            f"did not finish: it was stopped or crashed before its last step, which removes this file and renames "
            f"the folder to '{out.name}'.\n\nRun the same command again with the same output folder: the rerun "
            f"removes this folder (or delete it yourself).\n")


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A folder beside ``out`` that becomes ``out`` only if the block finishes, written under ``OUT.lock``.

    On any error the folder is removed and whatever was at ``out`` is left as it was.

    Args:
        out: the output folder.
        overwrite: replace an existing ``out`` (also one that appeared while the block ran).

    Raises:
        BundleError: another run holds the lock, or ``out`` exists without ``overwrite``.
    """
    out = Path(out)
    with output_lock(out):
        _check_target(out, overwrite)
        _remove_stale_partials(out)
        tmp = out.with_name(f"{out.name}{PARTIAL_INFIX}{os.getpid()}")
        tmp.mkdir()
        try:
            (tmp / PARTIAL_MARKER).write_text(_marker_text(out), encoding="utf-8")
            yield tmp
            _finish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _finish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an ``out`` that appeared meanwhile is replaced only with ``overwrite``."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise BundleError(f"Output {out} appeared while this run was writing it (a writer that does not take "
                          f"{lock_path(out).name}?); it was left as it is. Pass overwrite=True (--overwrite) to "
                          "replace it, or choose another output folder.")
    (tmp / PARTIAL_MARKER).unlink()
    if out.exists() or out.is_symlink():
        replace_dir(tmp, out)
        return
    try:
        os.rename(tmp, out)
    except OSError as exc:  # a non-empty folder appeared between the check and the rename
        raise BundleError(f"Output {out} appeared while this run was writing it ({exc.strerror}); it was left as "
                          "it is.") from None


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the folder ``tmp`` at ``out``, removing what was there only once ``tmp`` is in place."""
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, out)

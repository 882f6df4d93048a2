"""How the command line fails: one line for the user, a log file for a bug.

Every command runs inside :class:`ErrorHandlingGroup`, the Typer app's group
class, so the rule is kept in one place rather than per command:

* a user error (a :class:`~transferkit.errors.TransferkitError`, or an
  ``OSError`` about a named file: missing, not readable, not writable) prints
  ``error: MESSAGE`` on one line of stderr and exits with code 2, the code of
  Typer's own usage errors;
* an unexpected exception (a bug, or the machine running out of memory)
  prints one line naming a log file that holds the traceback and exits with
  code 1. Logs go to ``$TRANSFERKIT_LOG_DIR``, else
  ``~/.cache/transferkit/logs``, else the system's temporary folder;
* library warnings (:class:`~transferkit.errors.TransferkitWarning`) print as
  ``warning: MESSAGE`` on one line.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from transferkit.errors import TransferkitError, TransferkitWarning

#: Environment variable naming the folder for the tracebacks of internal errors.
LOG_DIR_ENV = "TRANSFERKIT_LOG_DIR"
USER_ERROR, INTERNAL_ERROR = 2, 1

# soft_wrap: a message stays one line whatever the terminal's width (a pipe would otherwise wrap at 80)
_stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def one_line(message: object) -> str:
    """``message`` as one printable line: newlines folded, undecodable file-name bytes shown as ``\\xNN``.

    Example:
        >>> one_line("bad value\\n  in line 2")
        'bad value in line 2'
        >>> one_line("caf\\udce9.csv")   # a non-UTF-8 file name, as Python decodes it
        'caf\\\\xe9.csv'
    """
    text = re.sub(r"\s*\n\s*", " ", str(message)).strip()
    try:  # file names with bytes that are not UTF-8 reach Python as lone surrogates (PEP 383)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def print_line(label: str, message: object, style: str) -> None:
    """Print ``LABEL: MESSAGE`` on one stderr line; the message is shown as is, never read as markup."""
    _stderr.print(Text.assemble((f"{label}:", style), " ", one_line(message)))


def log_dir() -> Path:
    """Where internal errors are logged: ``$TRANSFERKIT_LOG_DIR``, else ``~/.cache/transferkit/logs``."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    return Path.home() / ".cache" / "transferkit" / "logs"


def write_log(exc: BaseException) -> Path:
    """Write the command line and ``exc``'s traceback to a new log file; return its path.

    Falls back to the system's temporary folder when the log folder cannot be written.
    """
    from transferkit import __version__

    stamp = time.strftime("%Y%m%d-%H%M%S")
    body = (f"transferkit {__version__}, Python {sys.version.split()[0]}\n"
            f"command: {' '.join(map(one_line, sys.argv))}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "transferkit-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"error-{stamp}-{os.getpid()}.log"
            path.write_text(body, encoding="utf-8", errors="backslashreplace")
            return path
        except OSError:
            continue
    raise exc  # nowhere to write: the traceback itself is the last resort


def _user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or ``None`` when ``exc`` is a bug."""
    if isinstance(exc, TransferkitError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return None


def _internal_message(exc: BaseException, log: Path) -> str:
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":  # torch.OutOfMemoryError without importing torch
        return (f"out of memory. Lower --batch-size, --image-size or --max-length, or use a smaller backbone. "
                f"Details: {log}")
    detail = one_line(f"{name}: {exc}")
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    return f"internal error ({detail}). This is a bug in transferkit; the traceback is in {log}"


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, TransferkitWarning):
        print_line("warning", message, "bold yellow")
    else:
        _default(message, category, filename, lineno, file, line)


def handle(exc: Exception) -> typer.Exit:
    """Report ``exc`` as one line and return the :class:`typer.Exit` to raise (code 2 or 1)."""
    message = _user_message(exc)
    if message is not None:
        print_line("error", message, "bold red")
        return typer.Exit(USER_ERROR)
    print_line("error", _internal_message(exc, write_log(exc)), "bold red")
    return typer.Exit(INTERNAL_ERROR)


class ErrorHandlingGroup(TyperGroup):
    """The Typer group of ``transferkit``: runs every command under :func:`handle` (see the module docstring)."""

    def invoke(self, ctx):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
                raise  # Typer's own: usage errors (code 2), --help, Ctrl-C
            except Exception as exc:  # noqa: BLE001  (the one place that turns any failure into a message)
                raise handle(exc) from None

"""Audio data: a folder with one sub-folder per class, or a table column of audio file paths.

Every file's header is read when the data is read (``soundfile.info``: no samples decoded),
so a corrupt, empty or non-audio file, or a sample rate of 0, fails then, naming the file,
before any training. A clip longer than the backbone's window is refused when it is
preprocessed (the window belongs to the backbone).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferkit.backbones.audio import AUDIO_EXTENSIONS, audio_info
from transferkit.data.class_folders import class_dirs, read_class_folders
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError


def is_audio_folder(path: str | os.PathLike) -> bool:
    """Whether the class sub-folders of ``path`` hold audio files (and no images): an audio folder."""
    from transferkit.data.adapters_images import IMAGE_EXTENSIONS

    root = Path(path)
    if not root.is_dir():
        return False
    suffixes = {f.suffix.lower() for d in class_dirs(root)
                for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")}
    return bool(suffixes & set(AUDIO_EXTENSIONS)) and not suffixes & set(IMAGE_EXTENSIONS)


def check_audio_files(paths: list[str]) -> None:
    """Read every file's header; the first bad one raises a :class:`DataError` naming it."""
    for p in paths:
        audio_info(p)


def from_audio_folder(path: str | os.PathLike) -> TaskData:
    """Read a folder with one sub-folder per class of audio clips (``path/yes/1.wav``, ``path/no/a/2.flac``).

    The class is the first-level sub-folder; clips below it are found recursively. Suffixes:
    wav, flac, ogg, oga, mp3 (any case). Hidden files and folders are skipped.

    Raises:
        DataError: the folder is missing or has no class folders, a class folder holds no audio
            (named), a file is not readable audio (named).
    """
    root, items, targets, label_names = read_class_folders(path, AUDIO_EXTENSIONS, kind="Audio", contents="audio",
                                                           example="yes/1.wav")
    check_audio_files(items)
    return TaskData(items, targets, "audio", label_names=label_names, name=root.name, source=str(root.resolve()))


#: Column names taken as the transcript of a clip, in this order.
TRANSCRIPT_COLUMNS = ("transcript", "sentence", "text")


def is_transcript_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a CSV/TSV/JSONL table with an audio path column and a ``transcript`` column."""
    from transferkit.data.adapters_tables import TABLE_SUFFIXES, audio_path_column, read_table

    p = Path(path)
    suffix = Path(p.stem).suffix.lower() if p.suffix == ".gz" else p.suffix.lower()
    if not p.is_file() or suffix not in TABLE_SUFFIXES:
        return False
    try:
        frame, _ = read_table(p)
    except DataError:
        return False
    return "transcript" in frame.columns and audio_path_column(frame, ("transcript",)) is not None


def read_transcript_table(path: str | os.PathLike, *, audio_column: str | None = None,
                          transcript_column: str | None = None) -> TaskData:
    """Speech-recognition data: a table of audio paths (relative to the table's folder) and their transcripts.

    Args:
        path: CSV, TSV or JSONL (optionally gzipped).
        audio_column: the column of audio paths (default: ``audio``, ``path`` or ``file``).
        transcript_column: the column of transcripts (default: ``transcript``, ``sentence`` or ``text``).

    Raises:
        DataError: a missing column (the columns present named), a missing or unreadable clip, an empty
            transcript (file and line).
    """
    from transferkit.data.adapters_tables import _audio_items, audio_path_column, read_table

    p = Path(path)
    frame, lines = read_table(p)
    locate = lambda i: f"{p}: line {lines[i]}"  # noqa: E731
    present = ", ".join(map(str, frame.columns))
    transcript_column = transcript_column or next((c for c in TRANSCRIPT_COLUMNS if c in frame.columns), None)
    if transcript_column not in frame.columns:
        raise DataError(f"{p}: no transcript column ({transcript_column or ', '.join(TRANSCRIPT_COLUMNS)}). "
                        f"Columns present: {present}.")
    audio_column = audio_column or audio_path_column(frame, (transcript_column,))
    if audio_column not in frame.columns:
        raise DataError(f"{p}: no column of audio paths ({audio_column or 'audio, path or file'}). "
                        f"Columns present: {present}.")
    items = _audio_items(frame[audio_column], audio_column, p.parent, locate)
    transcripts = []
    for i, t in enumerate(frame[transcript_column]):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{locate(i)}: the transcript in column '{transcript_column}' is empty.")
        transcripts.append(t.strip())
    return TaskData(items, np.asarray(transcripts, dtype=object), "audio", task="speech-recognition", name=p.name,
                    source=str(p))

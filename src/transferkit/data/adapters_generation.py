"""Prompt/completion data for ``text-generation``: files, frames and pairs.

Formats (what TRL's ``SFTTrainer`` reads, too):

* CSV/TSV/JSONL with a ``prompt`` and a ``completion`` column (other names with
  ``prompt_column`` / ``completion_column``; the CLI's ``--text-column`` and
  ``--label-column``);
* JSONL chat records ``{"messages": [{"role": "user", "content": ...}, ...,
  {"role": "assistant", "content": ...}]}``: the last assistant turn is the
  completion, the turns before it the prompt (read through the tokenizer's chat
  template).

A JSONL file whose first record has ``prompt`` and ``completion``, or ``messages``,
and a CSV/TSV whose header has ``prompt`` and ``completion``, are read as
generation data without being told. Items become ``{"prompt": ...}`` or
``{"messages": [...]}`` dicts; targets the completions. An empty prompt or
completion, a chat without a final assistant turn, a missing column: one
message naming the file and line.

Example:
    >>> data = from_pairs(["Say hi."], ["Hi!"])
    >>> data.task, data.items[0], data.targets[0]
    ('text-generation', {'prompt': 'Say hi.'}, 'Hi!')
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from transferkit.backbones.causal_text import CHAT_ROLES
from transferkit.data.adapters_tables import read_table
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError
from transferkit.tasks.generation import check_prompt

TASK = "text-generation"


def _suffix(path: Path) -> str:
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def is_generation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds prompt/completion pairs or chats (read as ``text-generation`` without being told)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() == ".gz":
        return False
    try:
        with open(p, encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return False  # the table reader names the problem
    if _suffix(p) == ".jsonl":
        try:
            record = json.loads(first)
        except ValueError:
            return False
        return isinstance(record, dict) and ({"prompt", "completion"} <= set(record) or "messages" in record)
    if _suffix(p) in (".csv", ".tsv"):
        header = [c.strip().strip('"') for c in first.rstrip("\r\n").split("\t" if _suffix(p) == ".tsv" else ",")]
        return {"prompt", "completion"} <= set(header)
    return False


def _chat(messages, where: str) -> tuple[dict, str]:
    """A chat record -> (``{"messages": the turns before the last}``, the last assistant turn)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} turns.")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: turn {j + 1} must be {{'role': one of {', '.join(CHAT_ROLES)}, 'content': "
                            f"text}}; got {m!r:.80}.")
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(f"{where}: a training chat ends with the assistant turn to learn, after at least one other "
                        f"turn; this one ends with a {messages[-1]['role']!r} turn.")
    return {"messages": messages[:-1]}, messages[-1]["content"]


def from_pairs(prompts: Sequence, completions: Sequence[str] | None, *, name: str = "pairs", source: str = "",
               locate=None) -> TaskData:
    """Prompts (strings, or dicts with ``prompt`` / ``messages``) and their completions as TaskData.

    Raises:
        DataError: an empty prompt or completion, named by ``locate(i)`` (default: ``row i + 1``).
    """
    locate = locate or (lambda i: f"{name}: row {i + 1}")
    items = [check_prompt(p, locate(i)) for i, p in enumerate(prompts)]
    if completions is not None:
        for i, c in enumerate(completions):
            if not isinstance(c, str) or not c.strip():
                raise DataError(f"{locate(i)}: empty or non-text completion ({c!r:.60}); every prompt needs the "
                                f"text the model should learn to write.")
    return TaskData(items, None if completions is None else list(completions), "text", TASK, name=name,
                    source=source or name)


def read_generation_file(path: str | os.PathLike, *, prompt_column: str | None = None,
                         completion_column: str | None = None) -> TaskData:
    """Read prompt/completion pairs or chats from a CSV, TSV or JSONL file (see the module docstring).

    Args:
        path: the file (optionally ``.gz``).
        prompt_column: the prompt column (default ``prompt``).
        completion_column: the completion column (default ``completion``); a file without one is
            unlabelled (prompts to generate for).
    """
    p = Path(path)
    frame, lines = read_table(p)
    locate = lambda i: f"{p}: line {lines[i]}"  # noqa: E731
    prompt_col, completion_col = prompt_column or "prompt", completion_column or "completion"
    if "messages" in frame.columns and prompt_col not in frame.columns:
        prompts, completions = [], []
        for i, messages in enumerate(frame["messages"]):
            item, completion = _chat(messages, locate(i))
            prompts.append(item)
            completions.append(completion)
        return from_pairs(prompts, completions, name=p.name, source=str(p), locate=locate)
    for col in (prompt_col,) + ((completion_col,) if completion_column is not None else ()):
        if col not in frame.columns:
            raise DataError(f"{p}: no column '{col}'. Columns present: {', '.join(map(str, frame.columns))}. "
                            f"Generation data needs a prompt and a completion column (or JSONL 'messages').")
    completions = list(frame[completion_col]) if completion_col in frame.columns else None
    return from_pairs(list(frame[prompt_col]), completions, name=p.name, source=str(p), locate=locate)

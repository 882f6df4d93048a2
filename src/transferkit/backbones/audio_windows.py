"""Clips longer than a model's window: read in windows, never cut silently.

Whisper reads a fixed window (30 s, or its ``max_seconds``). A longer clip is split here, and what the
windows give is put back together per clip:

* classification (:func:`overlapping_windows`): windows overlapping by a third, so every stretch of
  audio is encoded with context on both sides; each window keeps the frames of its middle (the first
  and last windows their outer edge too), so the kept frames tile the clip once. The encoder's frame
  features of all windows are joined into one sequence per clip (:func:`join_windows`) and pooled by
  the same masked mean as a short clip: a clip's pooled features are the mean over all its frames. For
  a linear head this is the frame-weighted mean of the windows' logits. Training and prediction read
  long clips the same way, and so does every strategy (probes read the pooled features from the cache).
* speech recognition (:func:`pause_windows`): windows cut at pauses that Silero VAD finds
  (:mod:`transferkit.backbones.vad`), each transcribed on its own and the transcripts joined with a
  space; stretches of speech longer than the window, or any long clip when ``silero-vad`` is not
  installed, are cut into windows overlapping by a third, and the words the two transcripts share in
  the overlap are kept once (:func:`join_transcripts`). Windows without speech are not transcribed.

A window is ``(start, stop, keep_start, keep_stop, overlaps_previous)`` in samples of the clip.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch

#: Samples per Whisper encoder position (10 ms mel frames, then a stride-2 convolution).
POSITION = 320


class Window(NamedTuple):
    """A window of a clip, in samples: what the model reads, the part whose frames it keeps, and whether
    it overlaps the window before it (its transcript's first words repeat the previous one's last)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int
    overlaps_previous: bool = False


def overlapping_windows(n_samples: int, window: int, start: int = 0) -> list[Window]:
    """Windows of ``window`` samples over ``[start, start + n_samples)``, overlapping by a third.

    Each window keeps the frames of its middle (the first one from its start, the last one to the
    span's end), so the kept parts tile the span exactly once. Boundaries fall on encoder positions.

    Example:
        >>> [tuple(w)[:4] for w in overlapping_windows(3840, 1920)]
        [(0, 1920, 0, 1600), (1280, 3200, 1600, 2880), (2560, 3840, 2880, 3840)]
    """
    if n_samples <= window:
        return [Window(start, start + n_samples, start, start + n_samples)]
    positions = max(3, window // POSITION)
    context = positions // 6
    stride = (positions - 2 * context) * POSITION
    context *= POSITION
    count = 1 + -(-(n_samples - window) // stride)
    out = []
    for k in range(count):
        a = k * stride
        b = min(a + window, n_samples)
        keep_a = a if k == 0 else a + context
        keep_b = b if k == count - 1 else a + context + stride
        out.append(Window(start + a, start + b, start + keep_a, start + keep_b, k > 0))
    return out


def pause_windows(n_samples: int, window: int, segments: list[tuple[int, int]] | None) -> list[Window]:
    """Windows of at most ``window`` samples over the ``segments`` of speech, cut in pauses.

    A window starts where a segment starts and takes the following segments while they end within
    ``window``; it ends halfway into the pause after its last segment (or at the window's length). A
    segment longer than ``window`` gets :func:`overlapping_windows` of its own. Audio outside every
    segment is not read. ``segments=None`` (no voice detector): overlapping windows over the clip.

    Example:
        >>> [tuple(w)[:2] for w in pause_windows(1000, 400, [(0, 150), (200, 350), (500, 700)])]
        [(0, 400), (500, 700)]
    """
    if segments is None:
        return overlapping_windows(n_samples, window)
    out: list[Window] = []
    i = 0
    while i < len(segments):
        start = segments[i][0]
        if segments[i][1] - start > window:  # one stretch of speech over the window
            out += overlapping_windows(segments[i][1] - start, window, start)
            i += 1
            continue
        j = i
        while j + 1 < len(segments) and segments[j + 1][1] - start <= window:
            j += 1
        stop = segments[j][1] if j + 1 == len(segments) else min(start + window,
                                                                 (segments[j][1] + segments[j + 1][0]) // 2)
        out.append(Window(start, stop, start, stop))
        i = j + 1
    return out


def join_windows(hidden: torch.Tensor, mask: torch.Tensor, window_item: torch.Tensor,
                 items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features of windows ``[W, T, D]`` (mask ``[W, T]``) as one sequence per clip ``[B, K * T, D]``.

    ``window_item[w]`` is the clip of window ``w`` (a clip's windows in order); ``K`` is the most windows
    of one clip. Frames of padding windows are masked out.
    """
    owners, slots = window_item.tolist(), [0] * len(window_item)  # plain ints: no device op per window
    for w in range(1, len(owners)):
        slots[w] = slots[w - 1] + 1 if owners[w] == owners[w - 1] else 0
    slot = torch.tensor(slots, dtype=window_item.dtype, device=window_item.device)
    k, (t, d) = int(slot.max()) + 1, hidden.shape[1:]
    out = hidden.new_zeros(items, k, t, d)
    out_mask = mask.new_zeros(items, k, t)
    out[window_item, slot] = hidden
    out_mask[window_item, slot] = mask
    return out.reshape(items, k * t, d), out_mask.reshape(items, k * t)


def _words(text: str) -> list[str]:
    """Words compared across windows: lower case, punctuation removed ("Left," and "left" agree)."""
    return [re.sub(r"[^\w']", "", w.lower()) for w in text.split()]


def join_transcripts(texts: list[str], overlaps: list[bool]) -> str:
    """One transcript from the transcripts of a clip's windows, in order.

    After a window that overlaps the one before (``overlaps[i]``), the longest run of words in which the
    end of the text so far and the start of the new one agree best is found (as the Hugging Face ASR
    pipeline aligns its chunks, on words here); its first half is taken from the earlier text and its
    second half from the later one. Other windows are joined with a space.

    Example:
        >>> join_transcripts(["The cat sat on the", "sat on the mat."], [False, True])
        'The cat sat on the mat.'
    """
    words: list[str] = []
    for text, overlap in zip(texts, overlaps):
        new = text.split()
        if overlap and words and new:
            left, right = _words(" ".join(words)), _words(text)
            best, best_score = 0, 0.0
            for n in range(1, min(len(left), len(right)) + 1):
                matches = sum(a == b for a, b in zip(left[-n:], right[:n]))
                score = matches / n + n / 1e4  # the longer run wins a tie
                if matches > 1 and score > best_score:  # two words at least, as the pipeline asks
                    best, best_score = n, score
            if best:
                words = words[:len(words) - best + best // 2]
                new = new[best // 2:]
        words += new
    return " ".join(words)

"""The micro-batcher of :mod:`transferkit.export.serve`: concurrent requests gathered into one model call.

A single worker task takes the first queued request, then gathers more until
``max_batch`` items or ``max_wait_s`` after that first request arrived, and
runs them as one ``run(items)`` call on the model thread (the event loop keeps
accepting meanwhile); results are split back per request. Should a batch still
fail, each of its requests is rerun alone, so only the request at fault fails.
:class:`ServingStats` counts what the model thread ran.

The queue is bounded: with ``max_queue`` items accepted and not yet answered,
:meth:`MicroBatcher.submit` raises :class:`Overloaded` (HTTP 503 with
``Retry-After``) instead of letting the queue, and every request's wait, grow
without bound. :meth:`MicroBatcher.drain` shuts down gracefully: it refuses new
work, finishes what was accepted, then stops the worker.

Example:
    >>> batcher = MicroBatcher(predictor.outputs, max_batch=32, max_wait_s=0.005)   # doctest: +SKIP
    >>> outputs = await batcher.submit(items)                                       # doctest: +SKIP
"""
import asyncio
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import TransferkitError

log = logging.getLogger("transferkit.serve")


class Overloaded(TransferkitError, RuntimeError):
    """No capacity now (the queue is full, or the service is shutting down): HTTP 503, retry later.

    Attributes:
        retry_after_s: whole seconds after which a retry may succeed (the ``Retry-After`` header).
    """

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class ServingStats:
    """Counters of what the model thread ran; ``batch_sizes`` maps items per batch to batch count.

    ``rejected`` counts requests refused with :class:`Overloaded`, ``timed_out`` those past their deadline.
    """

    requests: int = 0
    batches: int = 0
    items: int = 0
    failed_batches: int = 0
    model_seconds: float = 0.0
    batch_sizes: Counter = field(default_factory=Counter)
    rejected: int = 0
    timed_out: int = 0

    def record(self, requests: int, items: int, seconds: float) -> None:
        self.requests += requests
        self.batches += 1
        self.items += items
        self.model_seconds += seconds
        self.batch_sizes[items] += 1

    def to_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "items": self.items,
                "failed_batches": self.failed_batches, "rejected": self.rejected, "timed_out": self.timed_out,
                "model_seconds": round(self.model_seconds, 4),
                "mean_items_per_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "max_items_per_batch": max(self.batch_sizes, default=0),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


@dataclass(eq=False)  # hashed by identity: the batcher keeps a set of its outstanding jobs
class _Job:
    items: list
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Runs ``run(items) -> outputs`` on one model thread, gathering concurrent requests into batches.

    Args:
        run: the model call, e.g. ``predictor.outputs``; rows of its result follow ``items``.
        max_batch: most items in one call (a larger request runs as a batch of its own).
        max_wait_s: how long after the first queued request to wait for more.
        enabled: ``False`` runs every request as its own call (the baseline to compare with).
        max_queue: most items accepted and not yet answered (queued or running); a request that would
            exceed it raises :class:`Overloaded`, unless nothing is pending (a large request still runs).
    """

    def __init__(self, run: Callable[[list], np.ndarray], *, max_batch: int = 32, max_wait_s: float = 0.005,
                 enabled: bool = True, max_queue: int = 1024):
        self.run, self.max_batch, self.max_wait_s, self.enabled = run, max_batch, max_wait_s, enabled
        self.max_queue = max_queue
        self.stats = ServingStats()
        self.pending = 0  # items accepted and not yet answered
        self.closing = False
        # One model thread: the model sees one call at a time (tokenizers and some runtimes are not
        # re-entrant), and its own intra-op threads use the cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="transferkit-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._idle: asyncio.Event | None = None
        self._jobs: set[_Job] = set()  # accepted and not answered: failed by stop() should any remain

    def retry_after_s(self) -> int:
        """Seconds until the pending items should have run, at the model's measured speed (1 to 60)."""
        per_item = self.stats.model_seconds / self.stats.items if self.stats.items else 0.01
        return min(60, max(1, math.ceil(self.pending * per_item)))

    def check_capacity(self, n: int = 0) -> None:
        """Raise :class:`Overloaded` unless ``n`` more items fit (``n=0``: unless the queue has room at all)."""
        if self.closing:
            self.stats.rejected += 1
            raise Overloaded("The service is shutting down; retry on another instance or after it restarts.",
                             self.retry_after_s())
        if self.pending and self.pending + max(n, 1) > self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(f"The service is busy: {self.pending:,} items are waiting for the model (max_queue "
                             f"{self.max_queue:,}); retry after the Retry-After seconds.", self.retry_after_s())

    async def submit(self, items: list) -> np.ndarray:
        """The outputs of ``items`` (validated already), computed alone or with other requests.

        Raises:
            Overloaded: the queue is full, or the batcher is draining.
        """
        self.check_capacity(len(items))
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop.time())
        self.pending += len(items)
        self._jobs.add(job)
        try:
            if not self.enabled:
                await self._run_jobs([job])
            else:
                self._ensure_worker(loop)
                self._queue.put_nowait(job)
            return await job.future
        finally:  # answered, failed or cancelled (the client's deadline): no longer pending
            self.pending -= len(items)
            self._jobs.discard(job)
            if not self.pending and self._idle is not None:
                self._idle.set()

    async def stream(self, run: Callable[[Callable[[str], None], threading.Event], Any]) -> AsyncIterator[tuple[str, Any]]:
        """Run ``run(emit, cancel)`` on the model thread as one item of work, and yield what it makes as it goes:
        ``("piece", text)`` for each ``emit(text)``, then ``("end", result)``; an error of ``run`` is raised here.

        It waits its turn behind the model calls already started, counts as one pending item (the queue's
        bound and :meth:`drain` see it), and is counted in the stats as a batch of one. Closing the iterator
        early (the client went away, a deadline) sets ``cancel``: ``run`` should stop soon after.

        Raises:
            Overloaded: the queue is full, or the batcher is draining.
        """
        self.check_capacity(1)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(kind: str, value: Any) -> None:  # from the model thread
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def body() -> None:
            if cancel.is_set():  # closed while it waited for the model thread: nothing to make
                return
            start = time.perf_counter()
            try:
                result = run(lambda text: put("piece", text), cancel)
            except Exception as exc:  # noqa: BLE001 - handed to the request, as a batch's error is
                put("error", exc)
            else:
                put("end", (result, time.perf_counter() - start))

        self.pending += 1
        try:
            loop.run_in_executor(self._executor, body)
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    self.stats.failed_batches += 1
                    raise value
                if kind == "end":
                    result, seconds = value
                    self.stats.record(1, 1, seconds)
                    yield kind, result
                    return
                yield kind, value
        finally:
            cancel.set()
            self.pending -= 1
            if not self.pending and self._idle is not None:
                self._idle.set()

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        # Started lazily in the serving loop (ASGI transports without lifespan events work too).
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work(), name="transferkit-batcher")

    def open(self) -> None:
        """Accept work again (at the app's startup: a drained batcher can serve a restarted app)."""
        self.closing = False

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new work, wait up to ``timeout_s`` for the accepted items to be answered, then stop.

        Returns:
            Whether everything accepted was answered; requests still pending after the timeout fail
            with :class:`Overloaded`.
        """
        self.closing = True
        self._idle = asyncio.Event()
        if not self.pending:
            self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            drained = True
        except asyncio.TimeoutError:
            log.warning("shutdown: %d items still pending after %s s; failing them", self.pending, timeout_s)
            drained = False
        await self.stop()
        return drained

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with :class:`Overloaded`."""
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
        loop = asyncio.get_running_loop()
        for job in list(self._jobs):
            if not job.future.done() and job.future.get_loop() is loop:
                job.future.set_exception(Overloaded("The service shut down before this request was answered.", 1))

    async def _work(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry or await self._queue.get()
            jobs, carry = await self._gather(first)
            live = [j for j in jobs if not j.future.done()]  # a client that went away is skipped
            if live:
                try:
                    await self._run_jobs(live)
                except Exception as exc:  # never let the worker die; fail this batch only
                    log.exception("micro-batch worker error")
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(exc)

    async def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """Jobs for one batch, and the job that did not fit (the first of the next batch)."""
        loop = asyncio.get_running_loop()
        jobs, n = [first], len(first.items)
        deadline = first.arrived + self.max_wait_s
        while n < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if n + len(job.items) > self.max_batch:
                return jobs, job
            jobs.append(job)
            n += len(job.items)
        return jobs, None

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        items = [it for j in jobs for it in j.items]
        start = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:  # noqa: BLE001 - isolate the request at fault, then report its error
            self.stats.failed_batches += 1
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                await self._run_jobs([job])
            return
        self.stats.record(len(jobs), len(items), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(outputs[offset:offset + len(job.items)])
            offset += len(job.items)

    def _call(self, items: list) -> np.ndarray:
        outputs = np.asarray(self.run(items))
        if len(outputs) != len(items):
            raise RuntimeError(f"The predictor returned {len(outputs)} rows for {len(items)} items.")
        return outputs

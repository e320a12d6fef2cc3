"""Threads that run generations side by side (the engine batches their forward passes) and hand deltas to asyncio.

Requests never fail because others are running: up to --max-num-seqs run together, the rest wait in a FIFO
queue of at most --max-queued-requests (more are refused with QueueFull, a 429). A client that goes away
cancels its job: a waiting job is skipped, a running one stops before its next token and leaves the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from tuneforge.infer.engine import Generation
from tuneforge.infer.parse import Delta

_DELTA, _ERROR, _DONE = "delta", "error", "done"


class QueueFull(Exception):
    """The queue holds --max-queued-requests requests already."""


class Job:
    """A generation waiting for or running on the worker."""

    def __init__(self, generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.generation = generation
        self.cancelled = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    def cancel(self) -> None:
        """The client has gone: skip the job, or stop it before its next token."""
        self.cancelled.set()
        self.generation.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        """The generation's deltas as they are made; re-raises its error, if any."""
        while True:
            kind, value = await self._events.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]

    def _send(self, kind: str, value: object = None) -> None:
        """Called from the worker thread."""
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))


class Worker:
    """Runs up to `max_running` generations at once, each in its own thread, the rest in arrival order.

    The threads only read tokens: the engine's batcher runs one forward pass for all of them per step, so
    a running request never waits for another to finish. At most `max_queued` wait for a thread.
    """

    def __init__(self, *, max_queued: int = 128, max_running: int = 32) -> None:
        self.max_queued, self.max_running = max_queued, max_running
        self.running = self.waiting = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="tuneforge-generate")

    def submit(self, generation: Generation) -> Job:
        """Queue a generation; call from the event loop. Raises QueueFull when max_queued jobs wait already."""
        with self._lock:
            # Counted against both limits together: a job that finds a free thread does not wait (even with 0).
            if self.running + self.waiting >= self.max_running + self.max_queued:
                raise QueueFull(
                    f"{self.running} requests run and {self.waiting} wait (--max-num-seqs {self.max_running}, "
                    f"--max-queued-requests {self.max_queued})"
                )
            self.waiting += 1
        job = Job(generation, asyncio.get_running_loop())
        self._pool.submit(self._run, job)
        return job

    def close(self) -> None:
        """Drop the waiting jobs; running ones end when their clients go (the server cancels them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job) -> None:
        with self._lock:
            self.waiting -= 1
            self.running += 1
        end: tuple[str, object] = (_DONE, None)
        try:
            if not job.cancelled.is_set():
                for delta in job.generation:
                    job._send(_DELTA, delta)
        except Exception as exc:  # noqa: BLE001 -- reported to this request's client; the worker goes on
            end = (_ERROR, exc)
        finally:
            with self._lock:  # the place is free before the client hears the end, so its next request fits
                self.running -= 1
        job._send(*end)

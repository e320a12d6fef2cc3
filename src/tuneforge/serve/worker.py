"""One background thread that runs generations in arrival order and hands their deltas to asyncio.

Requests never fail because another is running: they wait in a FIFO queue. A client that goes away
cancels its job: a waiting job is skipped, a running one stops before its next token, so the next
request starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator

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
    """Runs jobs one at a time in a daemon thread."""

    def __init__(self, *, max_queued: int = 128, max_running: int = 1) -> None:
        self.max_queued = max_queued
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self.running = 0
        self._thread = threading.Thread(target=self._run, name="tuneforge-generate", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> Job:
        """Queue a generation; call from the event loop. Raises QueueFull when max_queued jobs wait already."""
        if self.waiting >= self.max_queued:
            raise QueueFull(f"{self.waiting} requests are waiting (--max-queued-requests {self.max_queued})")
        job = Job(generation, asyncio.get_running_loop())
        self._queue.put(job)
        return job

    @property
    def waiting(self) -> int:
        """Jobs queued behind the running one."""
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Finish the running job and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled.is_set():
                job._send(_DONE)
                continue
            self.running = 1
            try:
                for delta in job.generation:
                    job._send(_DELTA, delta)
            except Exception as exc:  # noqa: BLE001 -- reported to this request's client; the worker goes on
                job._send(_ERROR, exc)
            else:
                job._send(_DONE)
            finally:
                self.running = 0

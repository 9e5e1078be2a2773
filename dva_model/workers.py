"""Pipeline stages in worker threads joined by bounded queues.

A long clip is processed as a stream of chunks: frame decoding, face detection, warping, paste-back
and video encoding run in threads while the model runs in the caller's thread, so neither waits for
the other. Each queue holds at most ``maxsize`` chunks, and that bounds the memory: a stage that
gets ahead blocks until the next one takes a chunk. Decoding (FFmpeg), kornia/torch warps, dlib and
numpy release the GIL for most of their work, so threads overlap on a multi-core machine.

Errors and cancellation: an exception in a worker is raised again in the consumer (with its own
traceback chained); when the consumer stops early (a progress callback raised ``Cancelled``, or any
error), the workers are told to stop, their queues are drained, and they are joined before the
exception goes on, so no thread outlives the call.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, Optional, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_QUEUE_CHUNKS = 2  # chunks waiting between two stages (plus one in each stage's hands)
_POLL_S = 0.1  # how often a blocked worker looks at the stop flag
_END = object()


class QueueStats:
    """The most items any queue of a pipeline held at once (for tests that check memory is bounded)."""

    def __init__(self) -> None:
        self.max_items = 0
        self._lock = threading.Lock()

    def record(self, size: int) -> None:
        with self._lock:
            self.max_items = max(self.max_items, size)


def _put_while(q: queue.Queue, item, stats: Optional[QueueStats], waiting: Callable[[], bool]) -> bool:
    """Put ``item`` on the bounded queue ``q``, polling, for as long as ``waiting()`` holds (it may also raise);
    True once queued, False when ``waiting()`` turned False first."""
    while waiting():
        try:
            q.put(item, timeout=_POLL_S)
        except queue.Full:
            continue
        if stats is not None:
            stats.record(q.qsize())
        return True
    return False


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Background(Generic[T]):
    """Iterate ``items`` in a worker thread, handing them over through a queue of ``maxsize``.

    Use as a context manager or iterate it to the end; ``close()`` stops the worker early (it
    finishes the item it is computing, then exits) and joins it. ``items`` is closed in the worker
    when it is a generator, so a chain of ``Background``s shuts down from the consumer backwards.
    """

    def __init__(self, items: Iterable[T], *, maxsize: int = DEFAULT_QUEUE_CHUNKS, name: str = "dva-worker",
                 stats: Optional[QueueStats] = None) -> None:
        if maxsize < 1:
            raise ValueError(f"A stage queue must hold at least 1 item, got {maxsize}.")
        self._queue: "queue.Queue" = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._stats = stats
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Block until ``item`` is queued (True) or the consumer asked to stop (False)."""
        return _put_while(self._queue, item, self._stats, lambda: not self._stop.is_set())

    def _run(self, items: Iterable[T]) -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker, drop what it queued, and wait for it to exit."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL_S)

    def __enter__(self) -> "Background[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def background_map(function: Callable[[T], U], items: Iterable[T], *, maxsize: int = DEFAULT_QUEUE_CHUNKS,
                   name: str = "dva-worker", stats: Optional[QueueStats] = None) -> Background[U]:
    """``map(function, items)`` computed in a worker thread, ``maxsize`` results ahead of the consumer."""
    return Background((function(item) for item in items), maxsize=maxsize, name=name, stats=stats)


class Sink(Generic[T]):
    """A worker thread that calls ``consume(item)`` for every item ``put`` into a queue of ``maxsize``.

    ``put`` blocks while the queue is full and raises the worker's error if it failed. ``finish()``
    waits until every item is consumed (and raises a worker error); ``close()`` abandons the rest.
    """

    def __init__(self, consume: Callable[[T], None], *, maxsize: int = DEFAULT_QUEUE_CHUNKS,
                 name: str = "dva-sink", stats: Optional[QueueStats] = None) -> None:
        if maxsize < 1:
            raise ValueError(f"A stage queue must hold at least 1 item, got {maxsize}.")
        self._consume = consume
        self._queue: "queue.Queue" = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._stats = stats
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            try:
                self._consume(item)
            except BaseException as error:  # raised in the producer by the next put or finish
                self._error = error
                return

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        """Queue ``item`` for the worker (blocks while the queue is full)."""
        _put_while(self._queue, item, self._stats, self._running)

    def _running(self) -> bool:
        """True while the worker runs; its error, or its unexpected end, is raised here."""
        self._raise_error()
        if not self._thread.is_alive():
            raise RuntimeError("The pipeline's writer stopped unexpectedly.")
        return True

    def finish(self) -> None:
        """Wait until every queued item is consumed; raise the worker's error if it had one."""
        while self._thread.is_alive():
            self._raise_error()
            try:
                self._queue.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_error()

    def close(self) -> None:
        """Stop the worker without consuming the rest and wait for it to exit."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Sink[T]":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()
        else:
            self.close()

"""Streaming frames through a Predictor: decoding and pre-processing run in a background
thread while the model works on the previous frame."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Tuple

import numpy as np
import torch

from .instances import Instances

_END = object()


@dataclass
class StreamStats:
    """Counters of a :class:`FrameStream`; latencies are arrival-to-result, in ms."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    latencies_ms: List[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        elapsed = time.perf_counter() - self.started
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "dropped": self.dropped,
                "latency_ms_median": float(np.median(lat)), "latency_ms_p90": float(np.percentile(lat, 90)),
                "fps": self.frames_out / elapsed if elapsed > 0 else 0.0}


Prepared = Tuple[int, torch.Tensor, Tuple[int, int], float]


class FrameStream:
    """Iterator of :class:`Instances`, one per processed frame, in input order.

    A producer thread turns ``frames`` (paths or arrays) into network inputs and puts them
    in a queue of at most ``max_queue`` items; with ``drop_oldest`` a full queue discards its
    oldest frame (a live feed keeps up, the results skip frames) instead of making the
    producer wait. Each result's ``meta`` holds ``frame_index`` and ``latency_ms``;
    ``stats`` sums them up. Stopping the iteration early stops the producer.
    """

    def __init__(self, frames: Iterable[Any], prepare: Callable[[Any], Tuple[torch.Tensor, Tuple[int, int]]],
                 infer: Callable[[torch.Tensor, Tuple[int, int]], Instances], max_queue: int = 4,
                 drop_oldest: bool = False, pin_memory: bool = False):
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue}; expected >= 1")
        self.stats = StreamStats()
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max_queue)
        self._prepare, self._infer = prepare, infer
        self._drop_oldest, self._pin = drop_oldest, pin_memory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(frames),), daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._drop_oldest and item is not _END and not isinstance(item, BaseException):
                    try:
                        self._queue.get_nowait()
                        self.stats.dropped += 1
                    except queue.Empty:
                        pass

    def _produce(self, frames: Iterator[Any]) -> None:
        try:
            for index, frame in enumerate(frames):
                if self._stop.is_set():
                    return
                arrived = time.perf_counter()
                self.stats.frames_in += 1
                batch, size = self._prepare(frame)
                if self._pin:
                    batch = batch.pin_memory()
                self._put((index, batch, size, arrived))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> Instances:
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        index, batch, size, arrived = item
        instances = self._infer(batch, size)
        latency = (time.perf_counter() - arrived) * 1000
        instances.meta.update(frame_index=index, latency_ms=latency)
        self.stats.frames_out += 1
        self.stats.latencies_ms.append(latency)
        return instances

    def close(self) -> None:
        """Stop the producer thread (also called at the end of the iteration)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


class LatestFrame:
    """A one-frame mailbox between a live source and :meth:`Predictor.stream`.

    ``put(frame, tag)`` hands over the source's newest frame; a frame not yet taken is
    replaced (counted in ``dropped``), so a consumer slower than the source always gets the
    newest frame and never a backlog. Iterating yields the frames as they come, blocking
    while there is none, until :meth:`close`. ``tag`` is anything the caller wants back with
    the result (where the frame came from, when it arrived): :meth:`tag` gives it by the
    position of the frame in the iteration, which is the ``frame_index`` of a stream's result.
    """

    def __init__(self) -> None:
        self.dropped = 0
        self._pending: Any = _END
        self._pending_tag: Any = None
        self._closed = False
        self._taken = 0
        self._tags: dict = {}
        self._ready = threading.Condition()

    def put(self, frame: Any, tag: Any = None) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("put() on a closed LatestFrame")
            if self._pending is not _END:
                self.dropped += 1
            self._pending, self._pending_tag = frame, tag
            self._ready.notify()

    def close(self) -> None:
        """End the iteration (a frame waiting is dropped)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def waiting(self) -> bool:
        """Whether a frame is waiting to be taken."""
        with self._ready:
            return self._pending is not _END

    def tag(self, frame_index: int) -> Any:
        """The tag of the ``frame_index``-th frame taken. Results come in order, so the tags
        of earlier frames (those a stream dropped) are forgotten then."""
        with self._ready:
            for older in [index for index in self._tags if index < frame_index]:
                del self._tags[older]
            return self._tags.pop(frame_index)

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._closed or self._pending is not _END)
                if self._closed:
                    return
                frame, self._pending = self._pending, _END
                self._tags[self._taken] = self._pending_tag
                self._taken += 1
            yield frame

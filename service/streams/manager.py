"""Camera subscriptions: a reader per camera, a scheduler per stream, WebSocket fan-out.

Latest-frame policy: the reader keeps only the newest frame and wakes the stream's scheduler; the
scheduler takes the newest frame once the stream's single in-flight slot is free, `1 / max_fps` has
passed since the last submission and the backend's `FrameGate` lets one more camera frame in (twice
as many as the backend runs at once: those running and the next ones, prepared meanwhile; streams
take turns in arrival order), and submits it into the backend's shared batcher (key = stream id, so
cameras share batches fairly) with a deadline of `capture + frame_max_age_ms`. At most one frame
per stream is in flight and a frame is taken only when the backend is about to run it, so stale
frames never queue: with more cameras than the backend keeps up with, each gets fewer results, as
fresh. Every frame gets exactly one `FrameOutcome` (DESIGN §5); the processing of one frame is a
boundary: whatever it raises costs that frame (`error`, logged rate-limited), never the scheduler.

Housekeeping (every `housekeeping_period_s`) notices stalled cameras, publishes the fps gauges and
runs each camera's watchdog, which restarts a reader that failed (each camera heals alone).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor

import cv2
import numpy as np
from pydantic import BaseModel

from models.persons import Persons
from service.backends import BackendManager, LoadedBackend, Prepared
from service.backends.base import prepare_and_infer
from service.backends.topdown import DetectionCadence, Detections, TopDownBackend
from service.config import StreamSettings
from service.errors import (
    DeadlineExceededError,
    DuplicateStreamError,
    OverloadedError,
    StreamLimitError,
    UnknownStreamError,
)
from service.metrics import Metrics
from service.schemas import (
    ImageSize,
    SmoothingOptions,
    StreamFrameMessage,
    StreamLatency,
    StreamStateEvent,
    StreamTrackEvent,
    TrackedPerson,
    TrackingOptions,
    persons_json,
)
from service.streams.errorlog import ThrottledLog
from service.streams.gate import FrameGate
from service.streams.reader import CameraReader, Frame
from service.streams.states import FrameOutcome, StreamState
from service.streams.stream import ClientQueue, Stream
from service.streams.urls import redact, validate_stream_url
from service.streams.watchdog import ReaderWatchdog, RestartBackoff

__all__ = ["StreamManager"]

logger = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 30.0
"""per stream: at most one logged frame failure per interval (the rest are counted in the next line)"""


class StreamManager:
    def __init__(
        self,
        settings: StreamSettings,
        backends: BackendManager,
        metrics: Metrics,
        pool: Executor,
        *,
        default_backend: str,
        inference_timeout_s: float,
        min_person_score: float,
        housekeeping_period_s: float = 0.5,
        reader_factory: Callable[..., CameraReader] = CameraReader,
        det_every_n: int = 1,
    ) -> None:
        """`reader_factory(url, settings, *, name, on_state, on_frame)` makes each camera's reader;
        `det_every_n` is the default detector cadence of streams on top-down backends."""
        self._settings = settings
        self._backends = backends
        self._metrics = metrics
        self._pool = pool
        self._default_backend = default_backend
        self._inference_timeout_s = inference_timeout_s
        self._min_person_score = min_person_score
        self._housekeeping_period_s = housekeeping_period_s
        self._reader_factory = reader_factory
        self._det_every_n = det_every_n
        self._streams: dict[str, Stream] = {}
        self._gates: dict[str, FrameGate] = {}
        """per backend name: its camera frames in flight (`FrameGate`), sized once it has loaded"""
        self._housekeeping: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="streams-housekeeping")

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for stream_id in list(self._streams):
            await self.delete(stream_id)

    # -- CRUD ------------------------------------------------------------------------------------
    def list(self) -> list[Stream]:
        return list(self._streams.values())

    def get(self, stream_id: str) -> Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStreamError(f"no stream with id {stream_id!r}") from None

    async def create(
        self,
        url: str,
        *,
        name: str | None,
        backend: str | None,
        max_fps: float | None,
        tracking: TrackingOptions | None = None,
        smoothing: SmoothingOptions | None = None,
        skeleton_only: bool = False,
        det_every_n: int | None = None,
    ) -> Stream:
        """Validate everything first; nothing is started unless every check passes.

        `skeleton_only` is forced by the server setting `streams.skeleton_only`; `det_every_n`
        (top-down backends only) defaults to the server's `topdown.det_every_n`.
        """
        if len(self._streams) >= self._settings.max_streams:
            raise StreamLimitError(f"at most {self._settings.max_streams} streams (streams.max_streams)")
        backend_name = backend or self._default_backend
        self._backends.spec(backend_name)  # UnknownBackendError
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, validate_stream_url, url, self._settings)  # DNS off the loop
        stream_id = uuid.uuid4().hex[:12]
        name = name or stream_id
        if any(s.name == name for s in self._streams.values()):
            raise DuplicateStreamError(f"a stream named {name!r} exists already")
        await self._backends.acquire(backend_name)  # WeightsMissingError
        reader = self._reader_factory(
            url,
            self._settings,
            name=name,
            on_state=lambda st: self._state_changed(stream_id, st),
            on_frame=lambda: self._frame_arrived(stream_id),
        )
        backoff = RestartBackoff(self._settings.backoff_initial_s, self._settings.backoff_max_s, random.Random())
        stream = Stream(
            id=stream_id,
            name=name,
            url=url,
            backend=backend_name,
            max_fps=max_fps or self._settings.default_max_fps,
            created_at=time.time(),
            reader=reader,
            watchdog=ReaderWatchdog(reader, backoff),
            error_log=ThrottledLog(logger, ERROR_LOG_INTERVAL_S),
            tracking=tracking or TrackingOptions(),
            smoothing=smoothing or SmoothingOptions(),
            skeleton_only=skeleton_only or self._settings.skeleton_only,
            det_every_n=det_every_n or self._det_every_n,
        )
        self._streams[stream_id] = stream
        self._publish_state_metric(stream)
        self._zero_counters(stream)
        reader.start()
        stream.task = asyncio.create_task(self._schedule(stream), name=f"stream-{name}")
        logger.info("stream %s (%s) subscribed: %s", name, stream_id, redact(url))
        return stream

    async def delete(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise UnknownStreamError(f"no stream with id {stream_id!r}")
        if stream.task is not None:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task
        await asyncio.get_running_loop().run_in_executor(None, stream.reader.stop)
        message = StreamStateEvent(stream_id=stream.id, state=StreamState.STOPPED).model_dump_json()
        for client in stream.clients:
            client.put(message)
            client.close()
        self._metrics.forget_stream(stream.name)
        logger.info("stream %s (%s) removed", stream.name, stream.id)

    # -- WebSocket clients -------------------------------------------------------------------------
    def subscribe(self, stream_id: str) -> ClientQueue:
        stream = self.get(stream_id)
        client = ClientQueue(
            self._settings.ws_queue_messages,
            on_drop=lambda: self._metrics.ws_messages_dropped_total.labels(stream=stream.name).inc(),
        )
        stream.clients.add(client)
        client.put(StreamStateEvent(stream_id=stream.id, state=stream.state).model_dump_json())
        self._metrics.ws_clients.labels(stream=stream.name).set(len(stream.clients))
        return client

    def unsubscribe(self, stream_id: str, client: ClientQueue) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.clients.discard(client)
            self._metrics.ws_clients.labels(stream=stream.name).set(len(stream.clients))

    # -- internals ---------------------------------------------------------------------------------
    def _count(self, stream: Stream, outcome: FrameOutcome, n: int = 1) -> None:
        if n <= 0:
            return
        stream.outcomes[outcome] = stream.outcomes.get(outcome, 0) + n
        stream.frame_counters[outcome].inc(n)

    def _broadcast(self, stream: Stream, message: BaseModel) -> None:
        if not stream.clients:
            return  # nobody listens: no JSON to build on the event loop
        text = message.model_dump_json()
        for client in stream.clients:
            client.put(text)

    def _state_changed(self, stream_id: str, state: StreamState) -> None:
        """Called from a reader thread."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._on_state, stream_id)

    def _frame_arrived(self, stream_id: str) -> None:
        """Called from a reader thread for every frame: wake the stream's scheduler."""
        stream = self._streams.get(stream_id)
        if stream is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stream.new_frame.set)

    def _on_state(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._count_reconnects(stream)
        self._publish_state_metric(stream)
        self._broadcast(stream, StreamStateEvent(stream_id=stream.id, state=stream.state))

    def _count_reconnects(self, stream: Stream) -> None:
        """`stream_reconnects_total` follows the reader's own count (the REST `reconnects`)."""
        new = stream.reader.reconnects - stream.reconnects_counted
        if new > 0:
            stream.reconnects_counted += new
            self._metrics.stream_reconnects_total.labels(stream=stream.name).inc(new)

    def _zero_counters(self, stream: Stream) -> None:
        """Every counter series of a new stream exists from 0, so `rate()`/`increase()` (and the
        alerts built on them) see its first event instead of a series born at 1."""
        name = stream.name
        stream.frame_counters = {
            o: self._metrics.stream_frames_total.labels(stream=name, outcome=o) for o in FrameOutcome
        }
        for counter in (
            self._metrics.stream_reconnects_total,
            self._metrics.stream_reader_restarts_total,
            self._metrics.ws_messages_dropped_total,
        ):
            counter.labels(stream=name)

    def _publish_state_metric(self, stream: Stream) -> None:
        for state in StreamState:
            self._metrics.stream_state.labels(stream=stream.name, state=state).set(float(state == stream.state))

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(self._housekeeping_period_s)
            self._housekeep_once(time.monotonic())

    def _housekeep_once(self, now_mono: float) -> None:
        """Stall detection (no frame within the read timeout), counters, fps gauges, each reader's watchdog."""
        stall_s = self._settings.read_timeout_ms / 1000.0
        for stream in list(self._streams.values()):
            age_s = now_mono - (stream.reader.last_frame_mono or now_mono)
            stalled = stream.reader.state == StreamState.LIVE and age_s > stall_s
            if stalled != stream.stalled:
                stream.stalled = stalled
                if stalled:
                    logger.warning("camera %s: no frame for %.1f s (stalled)", stream.name, age_s)
                self._on_state(stream.id)
            self._count_reconnects(stream)
            if stream.watchdog.check(now_mono):
                self._metrics.stream_reader_restarts_total.labels(stream=stream.name).inc()
            self._metrics.stream_input_fps.labels(stream=stream.name).set(stream.reader.input_fps())
            self._metrics.stream_result_fps.labels(stream=stream.name).set(stream.result_fps())

    async def _schedule(self, stream: Stream) -> None:
        """Submit the newest frame whenever one arrives, the stream's slot is free and `max_fps` allows.

        Frames superseded before they could go are `skipped` (the `max_fps` rate limit chose not
        to take them) unless the stream's slot was busy through a submission slot `max_fps`
        allowed: those lost slots, and no more, are `dropped_overload`. Lost slots accumulate in
        fractions, so over time processed + dropped_overload = the frames `max_fps` would take
        (at most the camera's rate), whatever the inference time; an idle server drops nothing.
        """
        period_s = 1.0 / stream.max_fps
        max_age_s = self._settings.frame_max_age_ms / 1000.0
        loop = asyncio.get_running_loop()
        in_flight: asyncio.Task[None] | None = None
        next_allowed = loop.time()
        lost_slots = 0.0
        try:
            while True:
                await stream.new_frame.wait()
                stream.new_frame.clear()
                woke_at = loop.time()  # a frame is waiting from here on
                busy = in_flight is not None and not in_flight.done()
                lost_s = 0.0
                if in_flight is not None and busy:
                    await asyncio.wait({in_flight})
                    freed = loop.time()
                    lost_s = max(0.0, freed - max(next_allowed, woke_at))
                    if lost_s:  # counted below; the grid resumes now, or the next wait counts it again
                        next_allowed = freed
                if (delay := next_allowed - loop.time()) > 0:
                    await asyncio.sleep(delay)
                gate = self._gates.setdefault(stream.backend, FrameGate())
                asked = loop.time()
                if await gate.acquire():  # waited for the backend's turn: slots lost as to a busy slot
                    next_allowed = loop.time()
                    lost_s += next_allowed - asked
                frame = stream.reader.latest(stream.last_seq)
                if frame is None:
                    gate.release()
                    continue
                superseded = frame.seq - stream.last_seq - 1
                overload = 0
                if lost_s:  # max_fps slots that passed while a frame waited for the busy slot or the gate
                    lost_slots += lost_s / period_s
                    whole = int(lost_slots)
                    lost_slots -= whole
                    overload = min(superseded, whole)
                self._count(stream, FrameOutcome.DROPPED_OVERLOAD, overload)
                self._count(stream, FrameOutcome.SKIPPED, superseded - overload)
                stream.last_seq = frame.seq
                if time.monotonic() - frame.captured_mono > max_age_s:
                    gate.release()
                    self._count(stream, FrameOutcome.DROPPED_STALE)
                    continue
                # the next slot stays on the max_fps grid, so late wake-ups do not add up to a lower
                # rate; a stream more than a period late (no frame, a busy slot) starts a new grid
                now = loop.time()
                next_allowed = next_allowed + period_s if now - next_allowed < period_s else now + period_s
                in_flight = asyncio.create_task(self._process(stream, frame, max_age_s))
                in_flight.add_done_callback(functools.partial(_give_back, gate))  # cancelled before it ran, too
        finally:
            if in_flight is not None:
                in_flight.cancel()

    async def _process(self, stream: Stream, frame: Frame, max_age_s: float) -> None:
        """One frame, start to end: exactly one outcome, whatever happens (the scheduler's boundary)."""
        try:
            outcome, message = await self._infer(stream, frame, max_age_s)
        except Exception:  # not an expected outcome: this frame is an `error`, the stream goes on
            outcome, message = FrameOutcome.ERROR, None
            stream.error_log.exception("stream %s: frame %d failed", stream.name, frame.seq)
        finally:
            if stream.skeleton_only:
                frame.release()  # whoever still holds the frame (the reader's slot) holds no pixels
        self._count(stream, outcome)
        if message is not None:
            self._broadcast(stream, message)

    async def _infer(
        self, stream: Stream, frame: Frame, max_age_s: float
    ) -> tuple[FrameOutcome, StreamFrameMessage | None]:
        """The frame's result message, or the outcome that explains why there is none.

        Only the expected failures are mapped here; anything else (a `ServeError` that is not an
        overload included, e.g. weights missing) propagates to `_process`.
        """
        loop = asyncio.get_running_loop()
        try:
            backend = await self._backends.acquire(stream.backend)
            # the frames it runs at once and as many ready behind them, so that no worker waits for
            # the next batch to be prepared (on a GPU, a whole batch of letterboxing)
            self._gates[stream.backend].resize(2 * backend.images_at_once)
            ticket = backend.admit()  # a frame the backend cannot take is refused before any work
            deadline, wait_s = frame.captured_mono + max_age_s, max_age_s + self._inference_timeout_s
            try:
                if (cadence := self._cadence(stream, backend)) is not None:
                    assert isinstance(backend, TopDownBackend)
                    item = await loop.run_in_executor(self._pool, _prepare_cadenced_bgr, backend, frame, cadence)
                    result = await backend.infer_cadenced(
                        item, cadence, deadline=deadline, wait_s=wait_s, key=stream.id, ticket=ticket
                    )
                else:
                    prepare = functools.partial(_prepare_bgr, backend, frame)
                    result = await prepare_and_infer(
                        self._pool, backend, prepare, deadline=deadline, wait_s=wait_s, key=stream.id, ticket=ticket
                    )
            finally:
                ticket.release()  # a no-op once the frame was queued in its slot
        except (DeadlineExceededError, TimeoutError):
            return FrameOutcome.DROPPED_STALE, None
        except OverloadedError:  # QueueFullError included
            return FrameOutcome.DROPPED_OVERLOAD, None
        except cv2.error:
            return FrameOutcome.DECODE_ERROR, None
        persons = self._tracked(stream, result.value.above(self._min_person_score), frame)
        now = time.monotonic()
        age_s = now - frame.captured_mono
        message = StreamFrameMessage(
            stream_id=stream.id,
            seq=frame.seq,
            untrained=backend.untrained,
            captured_at=frame.captured_at_ns / 1e9,
            image=ImageSize(width=int(frame.image_bgr.shape[1]), height=int(frame.image_bgr.shape[0])),
            persons=persons,
            latency_ms=StreamLatency(
                capture_to_result=round(age_s * 1000, 2),
                queue=round(result.queue_s * 1000, 2),
                inference=round(result.inference_s * 1000, 2),
            ),
        )
        stream.results_at.append(now)
        self._metrics.stream_result_age_seconds.labels(stream=stream.name).observe(age_s)
        return FrameOutcome.PROCESSED, message

    def _cadence(self, stream: Stream, backend: LoadedBackend) -> DetectionCadence | None:
        """The stream's detector schedule when it runs the detector less than every frame."""
        if stream.det_every_n <= 1 or not isinstance(backend, TopDownBackend):
            return None
        if stream.cadence is None:
            stream.cadence = DetectionCadence(stream.det_every_n, min_score=self._min_person_score)
        return stream.cadence

    def _tracked(self, stream: Stream, persons: Persons, frame: Frame) -> builtins.list[TrackedPerson]:
        """The frame's persons with their track ids (and smoothed keypoints); sends born/lost events first."""
        track_ids: builtins.list[int | None] = [None] * len(persons.scores)
        if stream.tracks is not None:
            update = stream.tracks.update(persons.keypoints, persons.boxes_xyxy, frame.captured_mono)
            if stream.smoothing.enabled:
                persons = Persons(update.keypoints.astype(np.float32), persons.boxes_xyxy, persons.scores)
            jitter = self._metrics.stream_keypoint_jitter_pixels.labels(stream=stream.name)
            for sample in update.jitter_px:
                jitter.observe(sample)
            if stream.tracking.enabled:
                track_ids = update.track_ids
                for event in update.events:
                    self._broadcast(
                        stream,
                        StreamTrackEvent(
                            stream_id=stream.id, frame_seq=frame.seq, change=event.change, track_id=event.track_id
                        ),
                    )
        # persons_json already gives the schema's exact types: no second validation per frame
        return [
            TrackedPerson.model_construct(**p, track_id=t)
            for p, t in zip(persons_json(persons), track_ids, strict=True)
        ]


def _give_back(gate: FrameGate, _: asyncio.Task[None]) -> None:
    gate.release()


def _prepare_bgr(backend: LoadedBackend, frame: Frame) -> Prepared:
    return backend.prepare(cv2.cvtColor(frame.image_bgr, cv2.COLOR_BGR2RGB))


def _prepare_cadenced_bgr(backend: TopDownBackend, frame: Frame, cadence: DetectionCadence) -> Prepared | Detections:
    return backend.prepare_cadenced(cv2.cvtColor(frame.image_bgr, cv2.COLOR_BGR2RGB), cadence)

"""The node's services: ~/ground, ~/set_queries, ~/find_image, ~/recall.

Handlers are coroutines (rclpy runs `async def` service callbacks as executor tasks): a call
waiting for a frame or for the model awaits an rclpy Future and holds no executor thread, so no
number of waiting calls can starve the image callbacks. Frame waits are completed by the
worker (FrameWaiters.offer) or by the node's expiry tick; model work (text passes, supplied
boxes, query images, scoring, 3D) runs on a small thread pool. Every call is answered with
success + a message within its bound: its timeout (clamped to max_wait) or default_timeout,
plus at most the model pass it already started.

On deactivate, cleanup or shutdown every pending call is answered at once (success=false,
"node deactivated" / "shutting down"); model work not yet started is cancelled.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from rclpy.parameter import Parameter
from rclpy.task import Future

from objembed_msgs.srv import FindImage, Ground, Recall, SetQueries
from objembed_ros.core.boxes import repair_boxes
from objembed_ros.core.errors import InputError, ModelBusy, ModelFailure, ModelNotReady
from objembed_ros.core.frames import Stamped, stamp_to_ns
from objembed_ros.core.selection import (
    FrameQuery,
    FrameWaiters,
    Wait,
    accepts,
    fmt_stamp,
    pick_frame,
    validate_min_score,
    validate_timeout,
    validate_top_k,
    wait_failure,
)
from objembed_ros.grounder import CachedFrame, GroundingResult
from objembed_ros.ros import convert

if TYPE_CHECKING:
    from objembed_ros.ros.node import GroundingNode

SERVICE_THREADS = 8  # model/scoring jobs of service calls run here, never on the executor


class NoFrame(InputError):
    """No cached frame to answer from (counted as no_frame, not bad_request)."""


def failure_for(err: BaseException) -> tuple[str, str]:
    """(diagnostics kind, message) for an error raised while answering a call: the one
    mapping from the grounder's error types to service answers."""
    if isinstance(err, NoFrame):
        return "no_frame", str(err)
    if isinstance(err, InputError):
        return "bad_request", str(err)
    if isinstance(err, ModelBusy):
        text = str(err)
        return "timeout", text if text.startswith("timeout") else f"timeout: {text}"
    if isinstance(err, ModelNotReady):
        return "model_not_ready", f"model not ready: {err}"
    if isinstance(err, ModelFailure):
        return "model_failure", f"model failure: {err}"
    return "internal_error", f"internal error: {type(err).__name__}: {err}"


class Aborted(Exception):
    """The call was ended by the node (deactivate, cleanup, shutdown); message = why."""


class Pending:
    """Rclpy futures of calls in flight (frame waits and model jobs), so the node can
    answer them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[int, tuple[Future, concurrent.futures.Future | None]] = {}
        self._next = 0

    def new(self, executor: Any) -> tuple[int, Future]:
        future = Future(executor=executor)
        future.add_done_callback(lambda _: None)  # wakes the executor when completed
        with self._lock:
            self._next += 1
            self._futures[self._next] = (future, None)
            return self._next, future

    def attach(self, key: int, job: concurrent.futures.Future) -> None:
        """The pool job behind a pending call (cancelled by abort_all if not started)."""
        with self._lock:
            if key in self._futures:
                self._futures[key] = (self._futures[key][0], job)

    def finish(self, key: int, result: Any) -> None:
        with self._lock:
            entry = self._futures.pop(key, None)
        if entry is not None:
            entry[0].set_result(result)

    def abort_all(self, why: str) -> int:
        with self._lock:
            entries, self._futures = self._futures, {}
        for future, job in entries.values():
            if job is not None:
                job.cancel()
            future.set_result(Aborted(why))
        return len(entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._futures)


class Services:
    """The service handlers of one GroundingNode."""

    def __init__(self, node: GroundingNode) -> None:
        self.node = node
        self.waiters: FrameWaiters[Stamped[CachedFrame]] = FrameWaiters()
        self.pending = Pending()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            SERVICE_THREADS, thread_name_prefix="objembed_service")
        self.calls_in_flight = 0
        self._count_lock = threading.Lock()

    # ---------------------------------------------------------------- plumbing
    def abort_all(self, why: str) -> None:
        """Answer every waiting call now (deactivate, cleanup, shutdown)."""
        self.waiters.fail_all(why)
        self.pending.abort_all(why)

    async def _off_thread(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the service pool; the calling task holds no thread meanwhile."""
        holder: dict[str, Any] = {}

        def run() -> None:
            try:
                holder["value"] = fn()
            except BaseException as err:  # delivered to the awaiting call
                holder["error"] = err
            self.pending.finish(key, holder)

        self._check_state()
        key, future = self.pending.new(self.node.executor)
        self.pending.attach(key, self.pool.submit(run))
        result = await future
        if isinstance(result, Aborted):
            raise result
        if "error" in result:
            raise result["error"]
        return result["value"]

    async def _wait_frame(self, query: FrameQuery, deadline: float) -> Stamped[CachedFrame] | None:
        """The first cached frame the query accepts, or None at the deadline."""
        self._check_state()
        grounder = self.node.grounder
        key, future = self.pending.new(self.node.executor)

        def done(entry: Stamped[CachedFrame] | None, why: str) -> None:
            self.pending.finish(key, Aborted(why) if entry is None and why != "timeout"
                                else entry)

        def accept(entry: Stamped[CachedFrame]) -> bool:
            return accepts(query, entry, entry.item.meta.received)

        waiter = self.waiters.add(accept, deadline, done)
        newest = grounder.frames.latest(query.camera) if grounder is not None else None
        if newest is not None and accept(newest):  # arrived while registering
            self.waiters.complete(waiter, newest)
        result = await future
        if isinstance(result, Aborted):
            raise result
        return result

    def _check_state(self) -> None:
        """Between the awaits of a call the node may have been deactivated or be closing."""
        refusal = self.node.refusal()
        if refusal is not None:
            raise Aborted(refusal[1])

    def _fail(self, response: Any, kind: str, message: str) -> Any:
        self.node.service_failures.add(kind)
        response.success = False
        response.message = message
        return response

    async def _answer(self, handler: Callable[..., Any], request: Any, response: Any) -> Any:
        """Run one handler: every outcome is an answer (errors mapped by failure_for)."""
        t_call = time.monotonic()
        with self._count_lock:
            self.calls_in_flight += 1
        try:
            refusal = self.node.refusal()
            if refusal is not None:
                return self._fail(response, *refusal)
            return await handler(request, response, t_call)
        except Aborted as err:
            return self._fail(response, "aborted", str(err))
        except Exception as err:
            kind, message = failure_for(err)
            if kind == "internal_error":
                self.node.get_logger().error(f"{message} (request {request!r})")
            return self._fail(response, kind, message)
        finally:
            with self._count_lock:
                self.calls_in_flight -= 1
            self.node.services_answered += 1
            self.node.service_latency.add(time.monotonic() - t_call)

    def _camera(self, camera: str) -> str | None:
        """The resolved camera name, or None for any; InputError for an unknown camera."""
        if not camera:
            return None
        try:
            name = self.node.resolve_topic_name(camera)
        except Exception as err:
            raise InputError(f"bad camera name {camera!r}: {err}") from err
        known = self.node.inputs.cameras
        if name not in known:
            raise InputError(f"unknown camera {name!r} (known: {', '.join(known)})")
        return name

    # ---------------------------------------------------------------- ~/ground
    async def ground(self, request: Ground.Request, response: Ground.Response) -> Any:
        return await self._answer(self._ground, request, response)

    async def _ground(self, request: Ground.Request, response: Ground.Response,
                      t_call: float) -> Ground.Response:
        node = self.node
        grounder = node.grounder
        assert grounder is not None
        min_score = validate_min_score(request.min_score)
        top_k = validate_top_k(request.top_k)
        wait = validate_timeout(request.timeout, float(node.get_parameter("max_wait").value))
        flat = convert.boxes_from_flat(request.boxes, grounder.config.max_boxes)
        query = FrameQuery(camera=self._camera(request.camera),
                           stamp_ns=stamp_to_ns(request.frame_stamp.sec,
                                                request.frame_stamp.nanosec),
                           fresh=bool(request.wait_for_fresh_frame), called_at=t_call,
                           max_age=float(node.get_parameter("max_frame_age").value))
        query.check()
        texts = list(request.queries)
        queries = await self._off_thread(lambda: grounder.check_queries(texts))
        entry = await self._select(query, wait)
        frame = entry.item
        # the model wait starts when the frame is chosen: a long frame wait does not eat it
        deadline = time.monotonic() + float(node.get_parameter("default_timeout").value)
        if flat is None:
            results = await self._off_thread(lambda: [
                node.inputs.with_positions(r, frame) for r in grounder.ground(
                    queries, frame, top_k, min_score, deadline, with_image_score=True)])
        else:
            kept, kept_index, status = repair_boxes(flat, *frame.image_size)
            response.box_status = status
            if len(kept) == 0:
                return self._fail(response, "bad_request",
                                  f"no box could be scored: {'; '.join(sorted(set(status)))}")
            results = await self._off_thread(
                lambda: self._ground_boxes(queries, frame, kept, kept_index, top_k, min_score,
                                           deadline))
        response.results = [convert.result_to_msg(r, frame.meta.header) for r in results]
        response.success = True
        response.message = (
            f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'} on {frame.camera} "
            f"frame {fmt_stamp(frame.stamp_ns)} with "
            f"{len(kept) if flat is not None else frame.num_boxes} boxes"
            + (f"; {wait.note}" if wait.note else ""))
        return response

    async def _select(self, query: FrameQuery, wait: Wait) -> Stamped[CachedFrame]:
        grounder = self.node.grounder
        assert grounder is not None
        by_stamp = (grounder.frames.by_stamp(query.stamp_ns, query.camera)
                    if query.stamp_ns else None)
        entry, why = pick_frame(query, grounder.frames.latest(query.camera), by_stamp,
                                lambda f: f.meta.received, time.monotonic())
        if entry is not None:
            return entry
        if query.stamp_ns or (wait.seconds == 0 and not query.fresh):
            raise NoFrame(why)
        entry = await self._wait_frame(query, query.called_at + wait.seconds)
        if entry is None:
            raise NoFrame(wait_failure(query, wait))
        return entry

    def _ground_boxes(self, queries: list[str], frame: CachedFrame, kept: np.ndarray,
                      kept_index: np.ndarray, top_k: int, min_score: float,
                      deadline: float) -> list[GroundingResult]:
        """Score supplied boxes; each object's proposal_index is its row in request.boxes."""
        grounder = self.node.grounder
        assert grounder is not None
        scored = grounder.ground_boxes(queries, frame, kept.astype(np.float32), top_k,
                                       min_score, deadline, with_image_score=True)
        out = []
        for result in scored:
            objects = [replace(o, proposal_index=int(kept_index[o.supplied_index]))
                       for o in result.objects]
            out.append(self.node.inputs.with_positions(replace(result, objects=objects), frame))
        return out

    # ---------------------------------------------------------------- ~/set_queries
    async def set_queries(self, request: SetQueries.Request,
                          response: SetQueries.Response) -> Any:
        return await self._answer(self._set_queries, request, response)

    async def _set_queries(self, request: SetQueries.Request, response: SetQueries.Response,
                           t_call: float) -> SetQueries.Response:
        grounder = self.node.grounder
        assert grounder is not None
        texts = list(request.queries)
        queries = await self._off_thread(
            lambda: grounder.check_queries(texts) if texts else [])
        result = self.node.set_parameters([Parameter("standing_queries",
                                                     Parameter.Type.STRING_ARRAY, queries)])[0]
        if not result.successful:
            return self._fail(response, "bad_request", result.reason)
        response.success = True
        response.message = (f"{len(queries)} standing queries" if queries
                            else "standing queries cleared")
        return response

    # ---------------------------------------------------------------- ~/find_image
    async def find_image(self, request: FindImage.Request,
                         response: FindImage.Response) -> Any:
        return await self._answer(self._find_image, request, response)

    async def _find_image(self, request: FindImage.Request, response: FindImage.Response,
                          t_call: float) -> FindImage.Response:
        node = self.node
        grounder = node.grounder
        assert grounder is not None
        camera = self._camera(request.camera)
        deadline = t_call + float(node.get_parameter("default_timeout").value)
        top_k = validate_top_k(request.top_k)
        kind = request.query_type
        if kind == FindImage.Request.QUERY_TEXT:
            text = request.text
            matches = await self._off_thread(lambda: grounder.find_frames(
                text=text, camera=camera, top_k=top_k, deadline=deadline))
        elif kind == FindImage.Request.QUERY_IMAGE:
            image = request.image
            matches = await self._off_thread(lambda: grounder.find_frames(
                image=self._query_image(image), camera=camera, top_k=top_k,
                deadline=deadline))
        elif kind == FindImage.Request.QUERY_CACHED_FRAME:
            stamp = stamp_to_ns(request.frame_stamp.sec, request.frame_stamp.nanosec)
            entry = grounder.frames.by_stamp(stamp, camera)
            if entry is None:
                return self._fail(response, "no_frame",
                                  f"no cached frame with stamp {fmt_stamp(stamp)}")
            matches = await self._off_thread(lambda: grounder.find_frames(
                frame=entry.item, camera=camera, top_k=top_k, deadline=deadline))
        else:
            raise InputError(f"unknown query_type {kind} (0 text, 1 image, 2 cached frame)")
        if not matches:
            return self._fail(response, "no_frame", "no frame yet")
        response.matches = [convert.frame_match_to_msg(m, m.meta.header) for m in matches]
        response.success = True
        response.message = f"{len(matches)} frames ranked"
        return response

    def _query_image(self, image: Any) -> np.ndarray:
        try:
            return convert.image_to_rgb(image)
        except convert.ImageConversionError as err:
            self.node.reject("query_image", err.reason, str(err))
            raise InputError(f"bad query image: {err}") from err

    # ---------------------------------------------------------------- ~/recall
    async def recall(self, request: Recall.Request, response: Recall.Response) -> Any:
        return await self._answer(self._recall, request, response)

    async def _recall(self, request: Recall.Request, response: Recall.Response,
                      t_call: float) -> Recall.Response:
        """The object memory's answer (query embedding and search on the pool); recalled
        entries are drawn on ~/recall_markers."""
        memory = self.node.memory
        if memory is None:
            return self._fail(response, "memory_disabled",
                              "memory disabled (memory_enabled=false)")
        response = await self._off_thread(lambda: memory.handle_recall(request, response))
        if not response.success:
            return self._fail(response, "recall_refused", response.message)
        self.node.publish_recall_markers(response.entries)
        return response

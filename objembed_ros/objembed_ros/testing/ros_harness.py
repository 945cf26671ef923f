"""A small rclpy client for tests and benches that talk to a node in another process."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class RosClient:
    """An rclpy node with its own context, spun on a background thread.

    Tests create publishers, subscriptions and clients on `.node` and wait with `wait_for`.
    """

    def __init__(self, name: str = "objembed_test_client") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        """Call a service and return the response, or raise TimeoutError."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout} s")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise TimeoutError(f"no response from {client.srv_name} in {timeout} s")
            time.sleep(0.002)
        return future.result()

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)

    def __enter__(self) -> RosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

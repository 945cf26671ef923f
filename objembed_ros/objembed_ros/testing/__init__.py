"""Helpers for tests, benches and the demo: tiny random checkpoints in the official formats
and a small rclpy client. Nothing here is used by the node at run time."""

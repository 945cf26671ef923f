"""Pure logic shared by the encoder, the proposer, the node and the CLI.

Imports numpy only: no torch, no rclpy. Box math, image resizing rules, scoring,
depth-to-3D geometry and bounded caches live here and are unit-tested directly.
"""

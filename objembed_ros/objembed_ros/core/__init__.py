"""Pure logic shared by the encoder, the proposers, the grounder, the node and the CLI.

No torch, no rclpy (numpy; PIL for letterboxing and the overlay). Box math, image resizing
rules, scoring, depth-to-3D geometry, bounded caches, frame rings, the error types and the
overlay renderer live here and are unit-tested directly.
"""

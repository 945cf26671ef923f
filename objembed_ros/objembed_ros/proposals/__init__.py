"""objembed_ros.proposals: where object boxes come from (torch; never rclpy).

``base`` (numpy only): :class:`Proposals`, the :class:`Proposer` protocol, supplied boxes and
whole-image sources. ``wedetect``: :class:`WeDetectProposer` (the official WeDetect-Uni
proposals); ``wedetect_model`` / ``wedetect_keys`` / ``select``: its network, checkpoint
reading and exact top-k + per-prompt NMS.
"""

"""objembed_ros.proposals: where object boxes come from (torch for WeDetect; never rclpy).

``base`` (numpy only): :class:`Proposals` and the one :class:`Proposer` interface, with the
sources that need no network: supplied/external boxes, the whole image as one box, the
sliding-window grid. ``wedetect``: :class:`WeDetectProposer` (the official WeDetect-Uni
proposals); ``wedetect_model`` / ``wedetect_keys`` / ``select``: its network, checkpoint
reading and exact top-k + per-prompt NMS.
"""

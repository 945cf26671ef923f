"""objembed-replay: recorded robot data through the node's core, without a ROS install.

bag.py      rosbag2 (sqlite3 / MCAP) in and out through rosbags
messages.py message types, pixel decoding and the node's outputs without rclpy
session.py  the replay loop (Grounder per frame, depth pairing, timing, outputs, report)
metrics.py  Acc@0.5 for referring expressions, COCO AP/AR (pycocotools) for classes
latency.py  per-stage latency percentiles and the machine description
report.py   CSV rows, the printed summary, the progress bar
cli.py      the objembed-replay command
"""

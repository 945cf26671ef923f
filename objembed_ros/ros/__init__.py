"""objembed_ros.ros."""

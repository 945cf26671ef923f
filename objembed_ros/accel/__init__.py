"""objembed_ros.accel."""

"""objembed_ros.proposals."""

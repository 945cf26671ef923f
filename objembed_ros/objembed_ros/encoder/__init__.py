"""objembed_ros.encoder."""

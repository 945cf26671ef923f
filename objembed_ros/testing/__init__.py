"""objembed_ros.testing."""

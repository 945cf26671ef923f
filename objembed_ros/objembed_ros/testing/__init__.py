"""Test support for tests, benches and the demo: tiny random checkpoints in the official
formats, the literal RoIAlign oracle and a small rclpy client. The node and the CLI never
import it (test/test_layering.py checks)."""

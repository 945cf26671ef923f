"""objembed_ros.encoder: ObjEmbed in torch (checkpoint, prompts, projector, RoIAlign, the
image and text passes). Never imports objembed_ros.accel: runtimes plug into ``hooks``."""

"""Real rosbag2 recordings for tests and examples, written with rosbags (no ROS install):
scikit-image photos as a camera stream with aligned depth and camera_info."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.replay.messages import Messages, make_typestore

IMAGE_TOPIC = "/camera/color/image_raw"
COMPRESSED_TOPIC = "/camera/color/image_raw/compressed"
DEPTH_TOPIC = "/camera/aligned_depth/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
NOTE_TOPIC = "/note"  # an unrelated topic the replay must carry over unchanged
FRAME_ID = "camera_color_optical_frame"
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray  # HxWx3 uint8
    depth_mm: np.ndarray | None = None  # HxW uint16; None: no depth message for this frame
    encoding: str = "rgb8"  # how the colour message stores it: rgb8, bgr8, or anything else
    # (written as rgb8 bytes with that encoding label, to test unsupported encodings)


def skimage_frames(n: int = 3) -> list[Frame]:
    """n real photos (astronaut, coffee, chelsea, ...) with a synthetic depth ramp each."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        rgb = np.ascontiguousarray(photos[i % len(photos)])
        h, w = rgb.shape[:2]
        depth = (1000 + 4 * np.arange(w, dtype=np.uint16)[None, :]
                 + np.zeros((h, 1), np.uint16)).astype(np.uint16)
        out.append(Frame(rgb, depth))
    return out


def camera_k(width: int, height: int) -> list[float]:
    f = 0.8 * width
    return [f, 0.0, width / 2 - 0.5, 0.0, f, height / 2 - 0.5, 0.0, 0.0, 1.0]


def write_recording(path: Path, frames: Sequence[Frame], storage: str = "mcap",
                    compressed: bool = False, period_ns: int = PERIOD_NS) -> Path:
    """A rosbag2 directory: colour (raw, or PNG CompressedImage), depth (16UC1, 1 ms after
    the colour frame, same header stamp), camera_info and a /note string per frame."""
    from PIL import Image as PILImage
    from rosbags.rosbag2 import StoragePlugin, Writer

    msgs = Messages(make_typestore())
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    colour_topic = COMPRESSED_TOPIC if compressed else IMAGE_TOPIC
    colour_type = "sensor_msgs/msg/" + ("CompressedImage" if compressed else "Image")
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {
            "colour": writer.add_connection(colour_topic, colour_type, typestore=msgs.store),
            "depth": writer.add_connection(DEPTH_TOPIC, "sensor_msgs/msg/Image",
                                           typestore=msgs.store),
            "info": writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo",
                                          typestore=msgs.store),
            "note": writer.add_connection(NOTE_TOPIC, "std_msgs/msg/String",
                                          typestore=msgs.store),
        }

        def put(key: str, t: int, msg: Any) -> None:
            writer.write(conns[key], t, msgs.serialize(msg))

        for i, frame in enumerate(frames):
            t = START_NS + i * period_ns
            h, w = frame.rgb.shape[:2]
            header = header_at(msgs, t)
            put("info", t, msgs.new("sensor_msgs/msg/CameraInfo", header=header, height=h,
                                    width=w, distortion_model="plumb_bob",
                                    k=np.asarray(camera_k(w, h), np.float64)))
            if compressed:
                import io

                buf = io.BytesIO()
                PILImage.fromarray(frame.rgb).save(buf, format="PNG")
                put("colour", t + 1, msgs.new(
                    "sensor_msgs/msg/CompressedImage", header=header, format="png",
                    data=np.frombuffer(buf.getvalue(), np.uint8)))
            else:
                pix = frame.rgb[..., ::-1] if frame.encoding == "bgr8" else frame.rgb
                put("colour", t + 1, msgs.new(
                    "sensor_msgs/msg/Image", header=header, height=h, width=w,
                    encoding=frame.encoding, step=w * 3,
                    data=np.ascontiguousarray(pix).reshape(-1)))
            if frame.depth_mm is not None:
                d = frame.depth_mm.astype("<u2")
                put("depth", t + 1_000_001, msgs.new(
                    "sensor_msgs/msg/Image", header=header, height=d.shape[0],
                    width=d.shape[1], encoding="16UC1", step=d.shape[1] * 2,
                    data=np.frombuffer(d.tobytes(), np.uint8)))
            put("note", t + 2, msgs.new("std_msgs/msg/String", data=f"frame {i}"))
    return path


def header_at(msgs: Messages, stamp_ns: int, frame_id: str = FRAME_ID) -> Any:
    return msgs.new("std_msgs/msg/Header", frame_id=frame_id,
                    stamp=msgs.new("builtin_interfaces/msg/Time",
                                   sec=stamp_ns // 1_000_000_000,
                                   nanosec=stamp_ns % 1_000_000_000))


# Hand-drawn boxes (xywh, pixels) and referring expressions for the first two photos.
DEMO_OBJECTS: tuple[tuple[tuple[str, tuple[int, int, int, int], str], ...], ...] = (
    (("person", (20, 15, 345, 497), "the astronaut in the orange suit"),
     ("flag", (0, 0, 95, 512), "the american flag"),
     ("helmet", (275, 345, 237, 167), "the helmet in the bottom right"),
     ("rocket", (355, 0, 110, 285), "the model space shuttle")),
    (("cup", (175, 20, 235, 285), "the cup of coffee"),
     ("saucer", (75, 65, 405, 325), "the red saucer"),
     ("spoon", (325, 65, 100, 260), "the spoon")),
)
DEMO_QUERIES = ("an astronaut", "a cup of coffee")


def demo_ground_truth(frames: int) -> dict[str, Any]:
    """COCO-style ground truth for skimage_frames(): frame 0 keyed by stamp, frame 1 by
    topic + index (objembed_ros.replay.metrics documents the format)."""
    names = sorted({name for objs in DEMO_OBJECTS for name, _, _ in objs})
    cat = {n: i + 1 for i, n in enumerate(names)}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, objs in enumerate(DEMO_OBJECTS[:frames]):
        key: dict[str, Any] = ({"stamp_ns": START_NS + i * PERIOD_NS} if i == 0
                               else {"index": i})
        images.append({"id": i + 1, "topic": IMAGE_TOPIC, **key})
        for name, box, expr in objs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat[name],
                         "bbox": list(box), "expressions": [expr]})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cat.items()]}


def main(argv: Sequence[str] | None = None) -> int:
    """python -m objembed_ros.testing.recording OUT: a demo recording, its ground truth
    (OUT_gt.json), standing queries (OUT_queries.yaml) and, on request, tiny checkpoints."""
    import argparse
    import json

    import yaml

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--tiny-checkpoints", type=Path,
                   help="also write DIR/objembed and DIR/wedetect.pth (random weights)")
    args = p.parse_args(argv)
    write_recording(args.out, skimage_frames(args.frames), args.storage)
    args.out.with_name(f"{args.out.name}_gt.json").write_text(
        json.dumps(demo_ground_truth(args.frames), indent=1))
    args.out.with_name(f"{args.out.name}_queries.yaml").write_text(
        yaml.safe_dump({"queries": list(DEMO_QUERIES)}))
    if args.tiny_checkpoints is not None:
        from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint
        from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint

        make_tiny_objembed_checkpoint(args.tiny_checkpoints / "objembed")
        make_wedetect_checkpoint(args.tiny_checkpoints / "wedetect.pth",
                                 stage_depths=(1, 1, 1, 1))
    print(f"wrote {args.out} ({args.frames} frames, {args.storage})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

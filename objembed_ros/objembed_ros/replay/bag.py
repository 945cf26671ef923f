"""rosbag2 recordings in and out, without ROS: rosbags reads and writes both storages.

Reading: a rosbag2 directory (metadata.yaml + sqlite3 or MCAP files) or a single .db3/.mcap
file through `rosbags.rosbag2.Reader`. An MCAP file cut short (a recorder that crashed: no
summary, no end magic) cannot be opened by index; it is read front to back with the `mcap`
library's StreamReader up to the cut, and the recording is marked truncated.

Writing: `rosbags.rosbag2.Writer` (rosbag2 version 9, MCAP or sqlite3 storage); original
topics are copied byte for byte with their message definitions, hashes and QoS.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORAGES = ("mcap", "sqlite3")


class ReplayError(Exception):
    """A recording replay cannot use (missing, unknown storage, unknown topic): the message
    says what and what to do."""


@dataclass
class Topic:
    """One topic of a recording (a rosbags Connection, or an MCAP channel after a cut)."""

    name: str
    msgtype: str
    count: int | None  # messages in the recording; None when unknown (truncated file)
    msgdef: str = ""  # the ros2msg definition stored with the recording, "" if none
    digest: str = ""  # RIHS01 type hash, "" if none
    qos: list[Any] = field(default_factory=list)
    handle: Any = None  # the reader's own connection object / channel id


class Recording:
    """The topics and messages of a rosbag2 recording (use as a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.truncated: str = ""  # why reading stopped early, "" when complete
        self._reader: Any = None
        self._mcap_file: Path | None = None
        self.topics: dict[str, Topic] = {}

    def __enter__(self) -> Recording:
        from rosbags.rosbag2 import Reader, ReaderError

        if not self.path.exists():
            raise ReplayError(f"recording not found: {self.path}")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except ReaderError as exc:
            mcap = self._single_mcap()
            if mcap is None or "magic" not in str(exc).lower():
                raise ReplayError(_open_hint(self.path, exc)) from exc
            self._reader = None
            self._mcap_file = mcap
            self.topics = self._scan_mcap_channels(mcap)
            return self
        except (FileNotFoundError, OSError) as exc:
            raise ReplayError(f"cannot open recording {self.path}: {exc}") from exc
        for conn in self._reader.connections:
            self.topics[conn.topic] = Topic(
                conn.topic, conn.msgtype, int(conn.msgcount), conn.msgdef.data or "",
                conn.digest or "", list(getattr(conn.ext, "offered_qos_profiles", []) or []),
                conn)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def storage(self) -> str:
        if self._mcap_file is not None:
            return "mcap"
        storage = getattr(self._reader, "storage", None)
        name = type(storage).__name__.lower()
        if "directory" in name:
            inner = getattr(storage, "storages", [None])
            name = type(inner[0]).__name__.lower() if inner else name
        return "mcap" if "mcap" in name else "sqlite3" if "sqlite" in name else name

    def messages(self, topics: list[Topic]) -> Iterator[tuple[Topic, int, bytes]]:
        """(topic, log time ns, CDR bytes) in log-time order. A cut MCAP stops early and
        sets `truncated`."""
        if self._mcap_file is not None:
            yield from self._stream_mcap(topics)
            return
        by_name = {t.name: t for t in topics}
        for conn, log_time, raw in self._reader.messages([t.handle for t in topics]):
            yield by_name[conn.topic], int(log_time), raw

    # -- a cut MCAP file --------------------------------------------------------------------
    def _single_mcap(self) -> Path | None:
        if self.path.is_file() and self.path.suffix == ".mcap":
            return self.path
        files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else []
        return files[0] if len(files) == 1 else None

    def _records(self, path: Path) -> Iterator[Any]:
        from mcap.exceptions import McapError
        from mcap.stream_reader import StreamReader

        with path.open("rb") as stream:
            try:
                yield from StreamReader(stream).records
            except (McapError, EOFError, ValueError) as exc:
                self.truncated = (f"{path.name} ends early ({type(exc).__name__}: {exc}); "
                                  "read up to the cut")

    def _scan_mcap_channels(self, path: Path) -> dict[str, Topic]:
        from mcap.records import Channel, Schema

        schemas: dict[int, Any] = {}
        topics: dict[str, Topic] = {}
        for rec in self._records(path):
            if isinstance(rec, Schema):
                schemas[rec.id] = rec
            elif isinstance(rec, Channel) and rec.schema_id in schemas:
                schema = schemas[rec.schema_id]
                topics[rec.topic] = Topic(rec.topic, schema.name, None,
                                          schema.data.decode("utf-8", "replace"), "", [],
                                          rec.id)
        self.truncated = ""  # set again by the message pass, which is the one that counts
        if not topics:
            raise ReplayError(f"{path}: not a readable MCAP recording (no channels before the "
                              "file ends)")
        return topics

    def _stream_mcap(self, topics: list[Topic]) -> Iterator[tuple[Topic, int, bytes]]:
        from mcap.records import Message

        wanted = {t.handle: t for t in topics}
        for rec in self._records(self._mcap_file):  # type: ignore[arg-type]
            if isinstance(rec, Message) and rec.channel_id in wanted:
                yield wanted[rec.channel_id], int(rec.log_time), rec.data


def _open_hint(path: Path, exc: Exception) -> str:
    text = str(exc)
    hint = ""
    if "Storage plugin" in text:
        hint = " (replay reads rosbag2 'sqlite3' and 'mcap' storage)"
    elif "Unrecognized storage format" in text:
        hint = " (give a rosbag2 directory, a .db3 or an .mcap file)"
    return f"cannot open recording {path}: {text}{hint}"


class OutputBag:
    """A new rosbag2 recording: original topics copied, the replay's topics added."""

    def __init__(self, path: Path, storage: str, store: Any) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        if storage not in STORAGES:
            raise ReplayError(f"output storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        self.store = store
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self.path, version=9, storage_plugin=plugin)
            self._writer.open()
        except WriterError as exc:
            raise ReplayError(f"cannot write {self.path}: {exc}") from exc
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def copy_topic(self, topic: Topic) -> None:
        """Add a connection that carries a recorded topic unchanged."""
        if topic.msgdef and topic.digest:
            conn = self._writer.add_connection(topic.name, topic.msgtype, msgdef=topic.msgdef,
                                               rihs01=topic.digest,
                                               offered_qos_profiles=topic.qos)
        else:
            self._ensure_type(topic)
            conn = self._writer.add_connection(topic.name, topic.msgtype, typestore=self.store,
                                               offered_qos_profiles=topic.qos)
        self._connections[topic.name] = conn
        self.counts[topic.name] = 0

    def add_topic(self, name: str, msgtype: str) -> None:
        self._connections[name] = self._writer.add_connection(name, msgtype,
                                                              typestore=self.store)
        self.counts[name] = 0

    def write(self, topic: str, log_time_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1

    def close(self) -> None:
        self._writer.close()

    def _ensure_type(self, topic: Topic) -> None:
        """Register a recorded type the typestore lacks, from the recording's definition."""
        if topic.msgtype in self.store.types:
            return
        if not topic.msgdef:
            raise ReplayError(f"topic {topic.name}: type {topic.msgtype} is unknown and the "
                              "recording stores no definition for it")
        from rosbags.typesys import get_types_from_msg

        self.store.register(get_types_from_msg(topic.msgdef, topic.msgtype))

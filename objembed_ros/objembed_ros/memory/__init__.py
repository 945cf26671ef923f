"""The object memory's persistent store: one small interface (MemoryStore), an embedded
default (SQLite in WAL mode) and a background writer that keeps writes off the frame path."""
from objembed_ros.memory.sqlite_store import SCHEMA_VERSION, SqliteStore
from objembed_ros.memory.store import MemoryStore
from objembed_ros.memory.writer import StoreWriter

__all__ = ["SCHEMA_VERSION", "MemoryStore", "SqliteStore", "StoreWriter"]

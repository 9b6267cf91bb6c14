"""The plain records an open image returns: what ``stat`` and the snapshot list give."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BlobStat", "SnapshotInfo"]


@dataclass(frozen=True)
class BlobStat:
    """One blob's directory entry: its size, and how it is stored (inline or a cluster map of ``depth``)."""

    name: str
    size: int
    inline: bool
    depth: int


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot's record, without its tree."""

    id: int
    name: str
    create_time: int
    blob_count: int
    metadata: bytes | None

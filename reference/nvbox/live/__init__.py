"""Live use of an image: a process keeps it open while running devices write
to it, through a FUSE mount (``nvbox mount``) or NBD exports (``nvbox serve``).

``session.LiveSession`` holds the lock and turns changes into commits;
``control`` is the socket through which ``nvbox snapshot`` reaches it.
"""

from .session import ERRNO_BY_CODE, LiveSession, SnapshotReader, errno_of

__all__ = ["ERRNO_BY_CODE", "LiveSession", "SnapshotReader", "errno_of"]

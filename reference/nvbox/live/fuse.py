"""The FUSE file system of ``nvbox mount``: an image's blobs as files.

Built on mfusepy (ctypes over libfuse 3, the path-based high-level API) and a
``LiveSession``; spec/rationale.md section 13 says why this binding and
gives the mapping from file-system calls to commits, which in short is:

- write, truncate, create, unlink, fallocate: pending (one open library
  transaction); committed at most ``commit_interval`` after the first of them;
- fsync, fdatasync, fsyncdir: commit everything pending, durable on return;
- rename: commits (swtpm renames a fully written temporary file over its state);
- close (FUSE ``flush``) of a handle whose file changed since the last commit:
  commits, and close(2) returns the commit's error;
- unmount (``fusermount3 -u``, ``nvbox umount``, SIGTERM, SIGINT): final commit.

Names: a blob ``a/b/c`` is the file ``MOUNT/a/b/c``; a directory is the set of
names that share its prefix, so the image stores no directories.  ``mkdir``
makes an empty directory that lives in the mount process's memory until a file
is put in it, it is removed, or the mount ends; a directory emptied by unlink
or rename stays, the same way.  ``MOUNT/.snapshots/NAME/`` shows snapshot NAME
read-only (a snapshot whose name holds a ``/`` is not shown there); the name
``.snapshots`` is reserved at the root (blobs under it are not shown, and it
cannot be written).  Blobs whose names are not path-safe (an empty, ``.`` or ``..`` component: see nvbox.names) and
blobs hidden under a blob of the same name as their directory are not shown.

Files belong to the mounting user, mode 0600 (``file_mode``).  The image
stores no metadata: a chmod holds for the rest of the mount (swtpm fchmods its
state files and fails without it), a chown to another user fails with EPERM,
and st_mtime is the time of the file's last change in this mount (else of the
last commit before it).
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
import stat
import threading
import time

import mfusepy

from ..errors import NvboxError, raise_code
from ..names import path_problem
from .session import LiveSession, errno_of

__all__ = ["NvboxFS", "SNAPSHOT_DIR", "run_mount"]

SNAPSHOT_DIR = ".snapshots"
# Linux fallocate(2) mode bits.
_FALLOC_KEEP_SIZE, _FALLOC_PUNCH_HOLE, _FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10
_RENAME_NOREPLACE = 1
_MAX_WRITE = 1 << 20


def _fs_call(method):
    """Run one FUSE operation under the session's lock (libfuse calls from
    several threads; the mount's own tables of directories, modes and handles
    change with the image): nvbox errors become their errno; a damaged image
    or a failing disk is logged with its error code (the program only sees EIO)."""
    @functools.wraps(method)
    def run(self, *args):
        try:
            with self.session.batch():
                return method(self, *args)
        except NvboxError as exc:
            code = errno_of(exc)
            if code == errno.EIO:
                self.log.error("nvbox: %s %s: %s", method.__name__, args[0] if args else "", exc)
            raise mfusepy.FuseOSError(code) from None
    return run


def _rel(path: str) -> str:
    """'/a/b' -> 'a/b' (the root is '')."""
    return path.lstrip("/")


class NvboxFS(mfusepy.Operations):
    """The operations of the mount, over ``session``.

    Args:
        session: the ``LiveSession``.
        snapshot: show only this snapshot, read-only (``--snapshot``).
        file_mode, dir_mode: permission bits of files and directories.
        on_ready: called from ``init``, once the kernel has answered the mount
            (the session's threads start there: the process has forked by then).
    """

    use_ns = True

    def __init__(self, session: LiveSession, *, snapshot: str | None = None, file_mode: int = 0o600,
                 dir_mode: int = 0o700, on_ready=None, log: logging.Logger | None = None):
        self.session = session
        self.log = log or session.log
        self.read_only = session.read_only or snapshot is not None
        self.root_view = session.view(snapshot) if snapshot is not None else None
        self.file_mode, self.dir_mode = file_mode & 0o7777, dir_mode & 0o7777
        self.on_ready = on_ready
        self.uid, self.gid = os.getuid(), os.getgid()
        self._dirs: set[str] = set()        # empty directories of this mount (never stored)
        self._mtime: dict[str, int] = {}    # name -> ns of its last change in this mount
        self._modes: dict[str, int] = {}    # name -> mode set by chmod in this mount
        self._fh_lock = threading.Lock()
        self._next_fh = 1
        self._handles: dict[int, str] = {}  # handle -> blob name, of handles on the active state
        self._append: set[int] = set()      # handles opened with O_APPEND
        self._written: set[int] = set()     # handles that wrote since the last commit
        self._start_ns = session.info()["commit_time"] * 10**9
        self.served = False                 # whether the kernel answered the mount (init ran)

    # -- where a path leads --------------------------------------------------------------

    def _place(self, path: str):
        """(reader, name, is_snapshot) for a path: the active state or a snapshot."""
        if path is None:        # a file unlinked while open (hard_remove): gone
            raise mfusepy.FuseOSError(errno.ESTALE)
        rel = _rel(path)
        if self.root_view is not None:
            return self.root_view, rel, True
        if rel == SNAPSHOT_DIR or rel.startswith(SNAPSHOT_DIR + "/"):
            parts = rel.split("/", 2)
            if len(parts) == 1:
                return None, "", True       # the .snapshots directory itself
            view = self.session.view(parts[1])
            return view, parts[2] if len(parts) > 2 else "", True
        return self.session, rel, False

    def _writable(self, path: str) -> tuple[LiveSession, str]:
        if path is None:
            raise mfusepy.FuseOSError(errno.ESTALE)
        name = _rel(path)
        if self.read_only or name == SNAPSHOT_DIR or name.startswith(SNAPSHOT_DIR + "/"):
            raise mfusepy.FuseOSError(errno.EROFS)
        if not name:
            raise mfusepy.FuseOSError(errno.EPERM)
        return self.session, name

    @staticmethod
    def _visible(names: list[str]) -> list[str]:
        return [n for n in names if path_problem(n) is None]

    def _children(self, reader, prefix: str) -> dict[str, bool]:
        """name -> is_directory, of the entries directly under ``prefix`` ('' or 'a/b/')."""
        names = reader.names()
        out: dict[str, bool] = {}
        i = bisect.bisect_left(names, prefix)
        while i < len(names) and names[i].startswith(prefix):
            n = names[i]
            if path_problem(n) is None:
                head, sep, _ = n[len(prefix):].partition("/")
                out[head] = out.get(head, False) or bool(sep)
            i += 1
        if reader is self.session:
            for d in self._dirs:
                if d.startswith(prefix) and "/" not in d[len(prefix):]:
                    out.setdefault(d[len(prefix):], True)
        return out

    def _is_dir(self, reader, name: str) -> bool:
        if not name:
            return True
        if reader is self.session and name in self._dirs:
            return True
        names, prefix = reader.names(), name + "/"
        i = bisect.bisect_left(names, prefix)
        return i < len(names) and names[i].startswith(prefix)

    def _kind(self, path: str):
        """(reader, name, stat-or-None): a file's BlobStat, None for a directory;
        ENOENT if neither."""
        reader, name, in_snapshot = self._place(path)
        if reader is None:
            return None, "", None
        if name:
            try:
                st = reader.stat(name)
                if path_problem(name) is None:
                    return reader, name, st
            except NvboxError as exc:
                if exc.code != "blob.not_found":
                    raise
        if self._is_dir(reader, name):
            return reader, name, None
        raise mfusepy.FuseOSError(errno.ENOENT)

    # -- attributes ---------------------------------------------------------------------------

    @_fs_call
    def getattr(self, path, fh=None):
        reader, name, st = self._kind(path)
        t = self._mtime.get(name, self._start_ns) if reader is self.session else self._start_ns
        common = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": t, "st_mtime": t, "st_ctime": t}
        if st is None:
            return dict(common, st_mode=stat.S_IFDIR | self._mode(self.dir_mode, reader, name), st_nlink=2)
        return dict(common, st_mode=stat.S_IFREG | self._mode(self.file_mode, reader, name), st_nlink=1,
                    st_size=st.size, st_blocks=(st.size + 511) // 512, st_blksize=self.session.cluster_size)

    def _mode(self, mode: int, reader, name: str = "") -> int:
        if self.read_only or reader is not self.session:
            return mode & ~0o222
        return self._modes.get(name, mode)

    @_fs_call
    def chmod(self, path, mode):
        # swtpm fchmods its state files (and fails without it): the mode holds
        # for the rest of the mount; the image stores none.
        reader, name, st = self._kind(path)
        if reader is not self.session or self.read_only:
            raise mfusepy.FuseOSError(errno.EROFS)
        self._modes[name] = stat.S_IMODE(mode)
        return 0

    @_fs_call
    def chown(self, path, uid, gid):
        self._kind(path)
        if uid not in (-1, self.uid) or gid not in (-1, self.gid):
            raise mfusepy.FuseOSError(errno.EPERM)
        return 0

    @_fs_call
    def utimens(self, path, times=None):
        reader, name, _ = self._kind(path)
        if reader is self.session and name:
            self._mtime[name] = times[1] if times else time.time_ns()
        return 0

    @_fs_call
    def statfs(self, path):
        info = self.session.info()
        bsize = info["cluster_size"]
        if info["capacity"]:
            blocks = info["capacity"] // bsize
            free = max(0, blocks - info["used_clusters"])
        else:   # growable: the host file system's room, in clusters
            host = os.statvfs(os.path.dirname(os.path.abspath(self.session.path or ".")))
            free = host.f_bavail * host.f_frsize // bsize
            blocks = info["used_clusters"] + free
        return {"f_bsize": bsize, "f_frsize": bsize, "f_blocks": blocks, "f_bfree": free, "f_bavail": free,
                "f_files": info["blob_count"] + 1, "f_ffree": 0, "f_namemax": 255}

    # -- directories -----------------------------------------------------------------------

    @_fs_call
    def readdir(self, path, fh):
        reader, name, st = self._kind(path)
        if st is not None:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        entries = [".", ".."]
        if reader is None:          # .snapshots
            entries += [s["name"] for s in self.session.snapshots() if "/" not in s["name"]]
            return entries
        children = self._children(reader, name + "/" if name else "")
        if reader is self.session and not name and self.root_view is None:
            children.pop(SNAPSHOT_DIR, None)
            entries.append(SNAPSHOT_DIR)
        return entries + sorted(children)

    @_fs_call
    def mkdir(self, path, mode):
        session, name = self._writable(path)
        with session.batch():
            if session.exists(name) or self._is_dir(session, name):
                raise mfusepy.FuseOSError(errno.EEXIST)
            self._parent_dir(session, name)
            self._dirs.add(name)
        return 0

    @_fs_call
    def rmdir(self, path):
        session, name = self._writable(path)
        with session.batch():
            if session.exists(name):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            if not self._is_dir(session, name):
                raise mfusepy.FuseOSError(errno.ENOENT)
            if self._children(session, name + "/"):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            self._dirs.discard(name)
        return 0

    def _parent_dir(self, session, name: str) -> None:
        """ENOENT unless ``name``'s parent directory exists; ENOTDIR if it is a file."""
        parent = name.rpartition("/")[0]
        if parent:
            if session.exists(parent):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            if not self._is_dir(session, parent):
                raise mfusepy.FuseOSError(errno.ENOENT)

    def _keep_parent(self, name: str) -> None:
        """A directory emptied by an unlink or rename stays (in memory)."""
        parent = name.rpartition("/")[0]
        if parent and not self._is_dir(self.session, parent):
            self._dirs.add(parent)

    def _filled(self, name: str) -> None:
        """A directory that got a file is no longer only in memory."""
        parent = name.rpartition("/")[0]
        while parent:
            self._dirs.discard(parent)
            parent = parent.rpartition("/")[0]

    # -- files ---------------------------------------------------------------------------------

    def _new_fh(self, flags: int, name: str | None) -> int:
        """A handle; on the active state (``name``) it counts as an open file."""
        with self._fh_lock:
            fh, self._next_fh = self._next_fh, self._next_fh + 1
        if flags & os.O_APPEND:
            self._append.add(fh)
        if name is not None:
            self.session.opened(name)
            self._handles[fh] = name
        return fh

    @_fs_call
    def create(self, path, mode, flags=0):
        session, name = self._writable(path)
        with session.batch():
            if self._is_dir(session, name):
                raise mfusepy.FuseOSError(errno.EISDIR)
            self._parent_dir(session, name)
            session.create(name)
            self._filled(name)
            self._touch(name)
            return self._new_fh(flags, name)

    @_fs_call
    def open(self, path, flags):
        reader, name, st = self._kind(path)
        if st is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable(path)
        if flags & os.O_TRUNC:      # libfuse 3 asks for atomic O_TRUNC: the open truncates
            with self.session.batch():
                if st.size:
                    self.session.truncate(name, 0)
                    self._touch(name)
                return self._new_fh(flags, name)
        return self._new_fh(flags, name if reader is self.session else None)

    @_fs_call
    def read(self, path, size, offset, fh):
        reader, name, _ = self._place(path)
        st = reader.stat(name)
        if offset >= st.size:
            return b""
        return reader.read(name, offset, min(size, st.size - offset))

    @_fs_call
    def write(self, path, data, offset, fh):
        session, name = self._writable(path)
        with session.batch():
            if fh in self._append:
                offset = session.stat(name).size
            n = session.write(name, offset, data)
            self._written.add(fh)
            self._touch(name)
        return n

    @_fs_call
    def truncate(self, path, length, fh=None):
        session, name = self._writable(path)
        with session.batch():
            session.truncate(name, length)
            self._touch(name)
            if fh is not None:
                self._written.add(fh)
        return 0

    @_fs_call
    def fallocate(self, path, mode, offset, length, fh):
        session, name = self._writable(path)
        with session.batch():
            size = session.stat(name).size
            if mode & ~(_FALLOC_KEEP_SIZE | _FALLOC_PUNCH_HOLE | _FALLOC_ZERO_RANGE):
                raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
            if mode & (_FALLOC_PUNCH_HOLE | _FALLOC_ZERO_RANGE):
                session.zero(name, offset, length)
            if not mode & _FALLOC_KEEP_SIZE and offset + length > size:
                session.truncate(name, offset + length)
            self._touch(name)
            self._written.add(fh)
        return 0

    @_fs_call
    def unlink(self, path):
        session, name = self._writable(path)
        with session.batch():
            if self._is_dir(session, name) and not session.exists(name):
                raise mfusepy.FuseOSError(errno.EISDIR)
            session.delete(name)
            self._mtime.pop(name, None)
            self._keep_parent(name)
        return 0

    @_fs_call
    def rename(self, old, new, flags=0):
        session, src = self._writable(old)
        _, dst = self._writable(new)
        with session.batch():
            if flags & ~_RENAME_NOREPLACE:
                raise mfusepy.FuseOSError(errno.EINVAL)   # RENAME_EXCHANGE, RENAME_WHITEOUT
            src_file, dst_file = session.exists(src), session.exists(dst)
            src_dir = not src_file and self._is_dir(session, src)
            dst_dir = not dst_file and self._is_dir(session, dst)
            if not (src_file or src_dir):
                raise mfusepy.FuseOSError(errno.ENOENT)
            if (dst_file or dst_dir) and flags & _RENAME_NOREPLACE:
                raise mfusepy.FuseOSError(errno.EEXIST)
            self._parent_dir(session, dst)
            if src_file:
                if dst_dir:
                    raise mfusepy.FuseOSError(errno.EISDIR)
                session.rename(src, dst)
                self._mtime[dst] = self._mtime.pop(src, time.time_ns())
                if src in self._modes:
                    self._modes[dst] = self._modes.pop(src)
                self._follow(src, dst)
            else:
                if dst_file:
                    raise mfusepy.FuseOSError(errno.ENOTDIR)
                if dst == src or dst.startswith(src + "/"):
                    raise mfusepy.FuseOSError(errno.EINVAL)
                if dst_dir and self._children(session, dst + "/"):
                    raise mfusepy.FuseOSError(errno.ENOTEMPTY)
                self._rename_dir(session, src, dst)
            self._filled(dst)
            self._keep_parent(src)
            session.commit()
        return 0

    def _rename_dir(self, session, src: str, dst: str) -> None:
        """Every blob and in-memory directory under ``src`` moves to ``dst``: all
        in the pending transaction, so the commit that follows makes it atomic."""
        prefix = src + "/"
        for name in [n for n in session.names() if n.startswith(prefix)]:
            session.rename(name, dst + name[len(src):])
        self._follow(src, dst)
        moved = {d for d in self._dirs if d == src or d.startswith(prefix)}
        self._dirs -= moved
        self._dirs |= {dst + d[len(src):] for d in moved}
        self._dirs.add(dst)

    def _follow(self, src: str, dst: str) -> None:
        """Open handles follow a rename of their file or of a directory above it."""
        for fh, name in list(self._handles.items()):
            if name == src:
                self._handles[fh] = dst
            elif name.startswith(src + "/"):
                self._handles[fh] = dst + name[len(src):]

    @_fs_call
    def flush(self, path, fh):
        # close(2): a handle that wrote since the last commit commits (swtpm 0.7
        # does not always fsync), and close returns that commit's error.
        name = self._handles.get(fh)
        if fh in self._written and name is not None:
            self._written.discard(fh)
            self.session.flush(name)
        return 0

    @_fs_call
    def release(self, path, fh):
        # By handle, not path: the file may have been renamed or unlinked since.
        self._append.discard(fh)
        self._written.discard(fh)
        name = self._handles.pop(fh, None)
        if name is not None:
            self.session.released(name)
        return 0

    @_fs_call
    def fsync(self, path, datasync, fh):
        name = self._handles.get(fh)
        if name is not None:
            self.session.fsync(name)
        return 0

    @_fs_call
    def fsyncdir(self, path, datasync, fh):
        if not self.read_only:
            self.session.commit()
        return 0

    # -- lifecycle -----------------------------------------------------------------------------

    def init_with_config(self, conn, config):
        # Writes of up to 1 MiB per request (libfuse asks the kernel for the
        # pages; its default is 128 KiB): fewer calls through ctypes, and a
        # 1 MiB write reaches the library without being gathered.
        if conn is not None:
            conn.max_write = max(conn.max_write, _MAX_WRITE)
        self.init("/")

    def init(self, path):
        self.served = True
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path):
        # libfuse calls this once the kernel has let go of the mount (fusermount3
        # -u, or the loop ended on SIGTERM/SIGINT): the final commit.
        try:
            self.session.close()
        except NvboxError as exc:
            self.log.error("nvbox: the final commit failed: %s", exc)

    def _touch(self, name: str) -> None:
        self._mtime[name] = time.time_ns()


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, passing rename's flags on (it drops them, and a dropped
    RENAME_NOREPLACE would replace a file the caller asked to keep)."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)


def run_mount(fs: NvboxFS, mountpoint: str, *, fsname: str, allow_other: bool = False) -> None:
    """Serve ``fs`` at ``mountpoint`` in this thread until it is unmounted
    (libfuse's multithreaded loop, in the foreground of this process)."""
    options = {"fsname": fsname, "subtype": "nvbox", "hard_remove": True,
               "attr_timeout": 0, "entry_timeout": 0, "negative_timeout": 0, "default_permissions": True}
    if allow_other:
        options["allow_other"] = True
    try:
        _FUSE(fs, mountpoint, foreground=True, **options)
    except RuntimeError as exc:
        # fuse_main's status: 8 also when SIGTERM/SIGINT/SIGHUP ended a mount
        # that served (the loop reports the signal); any status before init
        # means libfuse could not mount (its message is in the log).
        if not fs.served:
            raise_code("io.error", f"libfuse could not mount {mountpoint} (fuse_main returned {exc})")

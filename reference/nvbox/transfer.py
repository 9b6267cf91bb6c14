"""Blobs to and from a directory of files: what ``nvbox import``/``export`` do.

A directory (a device's state directory, say swtpm's ``--tpmstate dir=``) maps
to blobs by relative path: ``state/tpm/permanent`` is blob ``tpm/permanent``.

- ``collect_files`` lists the files, leaving out what ``DEFAULT_EXCLUDES``
  (lock files, editor temporaries, this module's own temporary files) and the
  caller's patterns match.
- ``import_files`` writes, in one transaction, only the blobs whose content
  differs from the image's: an unchanged blob keeps its clusters, so a re-import
  writes only what changed and a held snapshot keeps sharing the rest.
- ``export_blobs`` writes each blob to its file crash-safely (a temporary file
  in the same directory, fsync, rename, then fsync of the directory), so a crash
  leaves every file with either its old or its new content; with ``mirror`` it
  also removes the files the image does not hold.  A blob that cannot be
  exported (damaged, or a name that is not a path, see ``nvbox.names``) is
  reported and the others are written.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass, field

from .errors import NvboxError, raise_code
from .names import path_problem

__all__ = ["DEFAULT_EXCLUDES", "ExportResult", "ImportResult", "collect_files", "export_blobs", "import_files",
           "is_excluded"]

TEMP_SUFFIX = ".nvbox-tmp"

# Matched against a file's path relative to the directory and against its base name.
DEFAULT_EXCLUDES = (
    ".lock",                            # swtpm's lock file in its state directory
    "*~", ".*.swp", ".*.swo", ".*.swx",  # editor backups and vim swap files
    "#*#", ".#*",                       # emacs autosave and lock files
    ".*" + TEMP_SUFFIX,                 # export's own temporary files, left by a crash
)


def is_excluded(rel: str, patterns) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def collect_files(paths, exclude=DEFAULT_EXCLUDES) -> list[tuple[str, str]]:
    """(blob name, file path) for FILE and DIR arguments, sorted by name.

    A FILE becomes a blob named by its base name; a DIR contributes every regular
    file below it, named by its path relative to DIR with '/' separators.  Files
    matching a pattern of ``exclude`` are left out.
    """
    out: dict[str, str] = {}
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for fname in sorted(files):
                    full = os.path.join(root, fname)
                    rel = os.path.relpath(full, p).replace(os.sep, "/")
                    if os.path.isfile(full) and not is_excluded(rel, exclude):
                        _add_name(out, rel, full)
        elif os.path.exists(p):
            name = os.path.basename(os.path.normpath(p))
            if not is_excluded(name, exclude):
                _add_name(out, name, p)
        else:
            raise FileNotFoundError(2, "No such file or directory", p)
    return sorted(out.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))


def _add_name(out, name, path):
    if name in out:
        raise_code("usage.argument", f"two files would become blob {name!r}: {out[name]} and {path}")
    out[name] = path


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass
class ImportResult:
    written: list = field(default_factory=list)     # blob names whose content was (re)written
    unchanged: list = field(default_factory=list)   # blob names left as they were
    bytes_written: int = 0
    bytes_total: int = 0


def import_files(img, files, progress=None) -> ImportResult:
    """Store each (name, path) of ``files`` as a blob, in one transaction, writing
    only the blobs whose content differs.  ``progress(done, total)`` in bytes."""
    sizes = [os.path.getsize(path) for _, path in files]
    total, done = sum(sizes), 0
    result = ImportResult(bytes_total=total)
    with img.transaction():
        for (name, path), size in zip(files, sizes):
            data = _read(path)
            if _same_blob(img, name, data):
                result.unchanged.append(name)
            else:
                img[name] = data
                result.written.append(name)
                result.bytes_written += len(data)
            done += size
            if progress:
                progress(done, total)
    return result


def _same_blob(img, name, data) -> bool:
    """True when blob ``name`` exists with exactly ``data`` (the size is compared
    first, so a changed size costs no read)."""
    if name not in img:
        return False
    return img.stat(name).size == len(data) and img[name] == data


@dataclass
class ExportResult:
    written: list = field(default_factory=list)     # blob names written to files
    removed: list = field(default_factory=list)     # relative paths removed (mirror)
    failed: list = field(default_factory=list)      # {"name", "code", "message"} per blob not exported
    bytes_written: int = 0


def export_blobs(source, directory, *, mirror=False, mode=0o600, exclude=DEFAULT_EXCLUDES,
                 progress=None) -> ExportResult:
    """Write every blob of ``source`` (an open image or a snapshot view) to a file
    below ``directory`` named by the blob's name.

    ``mode``: the permission bits of the files (directories made get the matching
    search bits).  ``mirror``: afterwards ``directory`` holds exactly the blobs'
    files: others are removed, except those ``exclude`` matches (swtpm's lock
    file, say), and directories left empty are removed.  ``progress(done,
    total)`` in bytes.
    """
    result = ExportResult()
    entries = sorted(source.entries(), key=lambda e: e.name.encode("utf-8"))
    plan = {}
    for e in entries:
        problem = path_problem(e.name)
        if problem is None:
            plan[e.name] = e.size
        else:
            result.failed.append({"name": e.name, "code": "blob.name",
                                  "message": f"cannot be a file path: {problem}"})
    parents = {n.rsplit("/", 1)[0] for n in plan if "/" in n}
    parents = {"/".join(p.split("/")[:i]) for p in parents for i in range(1, p.count("/") + 2)}
    for n in sorted(set(plan) & parents):
        del plan[n]
        result.failed.append({"name": n, "code": "blob.name",
                              "message": "cannot be a file: it is also a directory in another blob's name"})
    dir_mode = mode | (mode & 0o444) >> 2
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    if mirror:
        result.removed = _remove_others(directory, set(plan), parents, exclude)
    total, done = sum(plan.values()), 0
    touched_dirs = set()
    for name, size in plan.items():
        parts = name.split("/")
        path = os.path.join(directory, *parts)
        try:
            link = _symlink_in_the_way(directory, parts[:-1])
            if link is not None:
                raise_code("io.error", f"{link} is a symbolic link: export does not write through it")
            data = source[name]
            os.makedirs(os.path.dirname(path), mode=dir_mode, exist_ok=True)
            _write_atomically(path, data, mode)
        except (NvboxError, OSError) as exc:
            code, message = ((exc.code, exc.message) if isinstance(exc, NvboxError)
                             else ("io.error", f"{exc.filename or path}: {exc.strerror or exc}"))
            result.failed.append({"name": name, "code": code, "message": message})
        else:
            result.written.append(name)
            result.bytes_written += len(data)
            touched_dirs.add(os.path.dirname(path))
        done += size
        if progress:
            progress(done, total)
    # Renames, removals and new directories are durable once their directories are.
    changed = touched_dirs | {os.path.join(directory, *rel.rstrip("/").split("/")[:-1]) for rel in result.removed}
    for d in sorted(_with_parents(changed, directory)):
        if os.path.isdir(d):
            _fsync_dir(d)
    result.failed.sort(key=lambda f: f["name"].encode("utf-8"))
    return result


def _write_atomically(path, data, mode) -> None:
    """Replace ``path`` by a file holding ``data``: after a crash it holds the old
    content or the new, never a mix (the directory's fsync is the caller's)."""
    d, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + base + ".", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _symlink_in_the_way(directory, dirs):
    """The first of the directories ``dirs`` below ``directory`` that is a symbolic link."""
    path = directory
    for part in dirs:
        path = os.path.join(path, part)
        if os.path.islink(path):
            return path
    return None


def _with_parents(dirs, top) -> set:
    """``dirs`` and each of their parents up to ``top`` (all below or at ``top``)."""
    top = os.path.normpath(top)
    out = set()
    for d in dirs:
        d = os.path.normpath(d)
        while d not in out:
            out.add(d)
            if d == top or len(d) <= len(top):
                break
            d = os.path.dirname(d)
    return out


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_others(directory, keep_files, keep_dirs, exclude) -> list[str]:
    """Remove files below ``directory`` that are not in ``keep_files`` (relative
    '/' paths) and that ``exclude`` does not match (this module's temporaries are
    always removed), then the directories left empty.  Returns what went."""
    removed = []
    for root, dirs, files in os.walk(directory, topdown=False):
        for fname in sorted(files):
            full = os.path.join(root, fname)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            ours = fname.endswith(TEMP_SUFFIX) and fname.startswith(".")
            if rel in keep_files or (is_excluded(rel, exclude) and not ours):
                continue
            os.unlink(full)
            removed.append(rel)
        rel_root = os.path.relpath(root, directory).replace(os.sep, "/")
        if rel_root != "." and rel_root not in keep_dirs and not os.listdir(root):
            os.rmdir(root)
            removed.append(rel_root + "/")
    return sorted(removed)

"""Which blobs differ between two states of an image, by content (``nvbox diff``).

``nvbox.snapshots.diff`` compares storage: it skips subtrees and entries the two
directory trees share without reading them, and reports every other entry as
changed, so a blob re-written with the same bytes shows as changed.  ``compare``
starts from that list and reads only those candidates: a blob is changed when
its size or its bytes differ, and "rewritten" when only its storage does.
"""

from __future__ import annotations

from .snapshots import diff as storage_diff

__all__ = ["compare"]


def compare(img, a: str, b: str | None = None) -> dict:
    """Snapshot ``a`` against snapshot ``b`` (the active state when None).

    Returns added, removed and changed names (by content), ``rewritten`` (names
    whose storage differs but whose content is equal), per-blob sizes, and
    ``equal`` (the two states hold the same blobs with the same content).
    """
    storage = storage_diff(img, a, b)
    old = img.snapshots.view(a)
    new = img if b is None else img.snapshots.view(b)
    changed, rewritten, sizes = [], [], {}
    for name in sorted(storage["changed"]):
        size_a, size_b = old.stat(name).size, new.stat(name).size
        if size_a != size_b or old[name] != new[name]:
            changed.append(name)
            sizes[name] = [size_a, size_b]
        else:
            rewritten.append(name)
    for name in storage["added"]:
        sizes[name] = [None, new.stat(name).size]
    for name in storage["removed"]:
        sizes[name] = [old.stat(name).size, None]
    added, removed = sorted(storage["added"]), sorted(storage["removed"])
    return {"added": added, "removed": removed, "changed": changed, "rewritten": rewritten,
            "sizes": dict(sorted(sizes.items())), "equal": not (added or removed or changed)}

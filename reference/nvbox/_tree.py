"""Cluster maps and the directory B-tree, copy-on-write over a ClusterStore.

A child in a tree is either a ``Pointer`` (durable: immutable, read through the
store's cache) or an in-memory node object (``MapNode``, ``DirNode``) that this
transaction copied or created.  In-memory nodes own their children's
references exactly as a written node would, so writing one at commit changes
no count, and dropping one drops its children.

Copying a durable node follows R-cow-2 (lazy reference counts): if the node is
shared (count > 1) every child gains a reference and the node loses one;
otherwise the copy inherits the children and the node is freed.  Dropping a
reference follows R-cow-3 and recurses only into clusters whose count reaches
0, so deleting a snapshot costs what only that snapshot held.
"""

from __future__ import annotations

import bisect
from operator import attrgetter

from . import _der as der
from . import _format as fmt
from .errors import raise_code

Pointer = fmt.Pointer
NULL = fmt.NULL
_offset = attrgetter("offset")


class MapNode:
    """A cluster-map node being changed: ``children`` holds fanout entries."""

    __slots__ = ("children",)

    def __init__(self, children):
        self.children = children


class Blob:
    """A directory entry being changed (the mutable twin of ``fmt.DirEntry``)."""

    __slots__ = ("name", "size", "inline", "depth", "root", "extra", "key")

    def __init__(self, name, size, inline=None, depth=0, root=NULL, extra=b"", key=None):
        self.name, self.size, self.inline, self.depth, self.root, self.extra = name, size, inline, depth, root, extra
        self.key = key or fmt.blob_key(name)

    @classmethod
    def of(cls, e):
        return cls(e.name, e.size, e.inline, e.depth, e.root, e.extra)

    def entry(self, root: Pointer | None = None) -> fmt.DirEntry:
        """The entry as ``fmt.decode_entry`` reads it back (an inline blob has no map)."""
        if self.inline is not None:
            return fmt.DirEntry(self.name, self.size, bytes(self.inline), extra=self.extra)
        ptr = root if root is not None else (self.root if isinstance(self.root, Pointer) else NULL)
        return fmt.DirEntry(self.name, self.size, None, self.depth, ptr, self.extra)

    def encode(self, width: int, root: Pointer | None = None) -> bytes:
        return self.entry(root).encode(width)


class DirNode:
    """A directory node being changed.  Leaf items are ``Blob``; index items are
    ``[low_key, child]`` lists.

    ``sizes`` caches the encoded length of each item (parallel to ``items``) and
    ``total`` their sum, so checking the node against its bounds after one
    change costs O(1) instead of re-measuring every entry (R-dir-5).  Change
    items through ``Trees.dir_insert``/``dir_pop``/``dir_set``/``dir_touch`` to
    keep the cache; ``sizes = None`` (or a length that no longer matches
    ``items``) means unknown, and the sizes are measured again when next needed.
    """

    __slots__ = ("level", "items", "sizes", "total")

    def __init__(self, level, items, sizes=None, total=0):
        self.level, self.items, self.sizes, self.total = level, items, sizes, total

    def keys(self):
        return [it.key for it in self.items] if self.level == 0 else [it[0] for it in self.items]

    def find(self, key: bytes, right: bool = False) -> int:
        """bisect_left (or bisect_right) of ``key`` over the node's keys, O(log n)."""
        get = _blob_key if self.level == 0 else _low_key
        return (bisect.bisect_right if right else bisect.bisect_left)(self.items, key, key=get)


def _blob_key(b):
    return b.key


def _low_key(it):
    return it[0]


class Trees:
    """Tree algorithms over one store."""

    def __init__(self, store):
        self.store = store
        self.geo = store.geo

    # -- reading durable nodes ----------------------------------------------------

    def map_node(self, ptr: Pointer, kind=fmt.KIND_MAP) -> list:
        geo = self.geo
        return self.store.read_cached(ptr, kind, lambda raw: fmt.decode_pointers(raw, geo))

    def dir_node(self, ptr: Pointer, level: int) -> fmt.DirNode:
        geo = self.geo
        node = self.store.read_cached(ptr, fmt.KIND_DIR, lambda raw: fmt.decode_dir_node(raw, geo, level))
        if node.level != level:  # a cached node reached again at another level: a cycle
            raise_code("directory.depth", f"directory node at offset {ptr.offset} is level {node.level}, "
                                          f"expected {level}")
        return node

    # -- copy-on-write and drop (R-cow-2, R-cow-3) -----------------------------------

    def _copied(self, ptr: Pointer, children) -> None:
        store = self.store
        i = ptr.offset >> self.geo.cluster_bits
        c = store.count(i)
        if c > 1:
            for ch in children:
                if isinstance(ch, Pointer) and not ch.is_null:
                    store.incref(ch)
            store.set_count(i, c - 1)
        else:
            store.decref(ptr)

    def map_copy(self, child, level: int, kind=fmt.KIND_MAP) -> MapNode:
        if isinstance(child, MapNode):
            return child
        if child.is_null:
            return MapNode([NULL] * self.geo.fanout)
        ptrs = list(self.map_node(child, kind))
        self._copied(child, ptrs)
        return MapNode(ptrs)

    def dir_copy(self, child, level: int) -> DirNode:
        if isinstance(child, DirNode):
            return child
        node = self.dir_node(child, level)
        if level == 0:
            items = [Blob.of(e) for e in node.items]
            children = [b.root for b in items if b.inline is None]
        else:
            items = [[b.low_key, b.child] for b in node.items]
            children = [it[1] for it in items]
        self._copied(child, children)
        return DirNode(level, items)

    def drop_map(self, child, level: int, kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA) -> None:
        """Drop one reference to a map subtree whose root is at ``level`` (0 = data)."""
        if isinstance(child, MapNode):
            for ch in child.children:
                self.drop_map(ch, level - 1, kind, data_kind)
            return
        if child.is_null:
            return
        if self.store.decref(child) == 0 and level > 0:
            for ch in self.map_node(child, kind):
                self.drop_map(ch, level - 1, kind, data_kind)

    def drop_blob(self, blob) -> None:
        if blob.inline is None:
            self.drop_map(blob.root, blob.depth)

    def drop_dir(self, child, level: int) -> None:
        if isinstance(child, DirNode):
            items = child.items
        elif child.is_null:
            return
        elif self.store.decref(child) == 0:
            items = self.dir_node(child, level).items
        else:
            return
        for it in items:
            if level == 0:
                self.drop_blob(it)
            else:
                self.drop_dir(it[1] if isinstance(it, list) else it.child, level - 1)

    # -- cluster maps: reading ------------------------------------------------------

    def map_lookup(self, root, depth: int, index: int, kind=fmt.KIND_MAP):
        """The data pointer of cluster ``index`` (NULL for a hole).

        Map nodes carry no level, so a pointer back to a node on the path would
        be read as a node (or as data) again: the path is checked (R-ptr-2 rule 4).
        """
        F = self.geo.fanout
        node = root
        path = []
        for level in range(depth, 0, -1):
            if isinstance(node, Pointer):
                if node.is_null:
                    return NULL
                path.append(node.offset)
                node = self.map_node(node, kind)
            else:
                node = node.children
            node = node[(index // F ** (level - 1)) % F]
            if isinstance(node, Pointer) and node.offset and node.offset in path:
                raise_code("pointer.cycle", f"cluster map pointer to offset {node.offset}, already on the path")
        return node

    def map_read(self, root, depth: int, size: int, offset: int, length: int,
                 kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA) -> bytes:
        if offset >= size or length <= 0:
            return b""
        length = min(length, size - offset)
        cs = self.geo.cluster_size
        out = bytearray()
        first, last = offset // cs, (offset + length - 1) // cs
        for i in range(first, last + 1):
            ptr = self.map_lookup(root, depth, i, kind)
            data = bytes(cs) if ptr.is_null else self.store.read_raw(ptr, data_kind)
            a = offset - i * cs if i == first else 0
            b = offset + length - i * cs if i == last else cs
            out += data[a:b]
        return bytes(out)

    # -- cluster maps: writing ------------------------------------------------------

    def _leaf_slot(self, blob, index: int, kind=fmt.KIND_MAP):
        """The mutable level-1 node holding cluster ``index`` and the position in it."""
        F = self.geo.fanout
        blob.root = self.map_copy(blob.root, blob.depth, kind)
        node = blob.root
        for level in range(blob.depth, 1, -1):
            j = (index // F ** (level - 1)) % F
            child = self.map_copy(node.children[j], level - 1, kind)
            node.children[j] = child
            node = child
        return node, index % F

    def _grow_depth(self, blob, new_size: int) -> None:
        geo = self.geo
        if new_size <= geo.cluster_size * geo.fanout ** blob.depth:
            return      # the map covers it already (an append to a big blob, mostly)
        want = geo.map_depth(new_size)
        while blob.depth < want:
            # The old root becomes child 0 of a new root: its reference moves, no count changes.
            blob.root = MapNode([blob.root] + [NULL] * (self.geo.fanout - 1))
            blob.depth += 1

    def map_write(self, blob, offset: int, data, kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA) -> None:
        """Write ``data`` at ``offset`` of a clustered blob, touching only its clusters."""
        cs = self.geo.cluster_size
        end = offset + len(data)
        old_size = blob.size
        self._grow_depth(blob, max(end, old_size))
        blob.size = max(end, old_size)
        if end <= offset:
            return
        view = memoryview(data)
        first, last = offset // cs, (end - 1) // cs
        # Clusters [lo, hi) are covered wholly, or up to the end of the data at or
        # past the old size: their new content is just the slice of ``data``.  Only
        # the first and last cluster can be partial: read, patch, write.
        lo = first if offset % cs == 0 else first + 1
        hi = last + 1 if (end % cs == 0 or end >= old_size) else last
        contents = []
        if first < lo:
            contents.append(self._patched(blob, first, offset, view, kind, data_kind))
        contents += [view[s:s + cs] for s in range(lo * cs - offset, hi * cs - offset, cs)]
        if last >= max(hi, lo):
            contents.append(self._patched(blob, last, offset, view, kind, data_kind))
        # Whole clusters [lo, full_hi) are consecutive in ``view``: a run of them
        # can go to the device straight from it.
        full_hi = min(hi, end // cs)
        source = (view, offset, lo, full_hi) if lo < full_hi else None
        self._store_clusters(blob, first, contents, kind, data_kind, source)

    def _patched(self, blob, i: int, offset: int, view, kind, data_kind) -> bytearray:
        """Cluster ``i``'s current content with the part of ``view`` (at ``offset``) over it."""
        cs = self.geo.cluster_size
        a = max(offset, i * cs) - i * cs
        b = min(offset + len(view), (i + 1) * cs) - i * cs
        old = self._get_data_ptr(blob, i, kind)
        base = bytearray(cs) if old.is_null else bytearray(self.store.read_raw(old, data_kind))
        base[a:b] = view[i * cs + a - offset:i * cs + b - offset]
        return base

    def _store_clusters(self, blob, first: int, contents, kind, data_kind, source=None) -> None:
        """Make data clusters ``first``, ``first + 1``, ... of ``blob`` hold
        ``contents``: in place when this transaction wrote the cluster and nobody
        shares it, else in a new cluster.  Contiguous clusters are written together.

        ``source`` = (view, offset, lo, hi): clusters lo..hi-1 are whole and lie
        consecutively in ``view`` (which starts at blob offset ``offset``)."""
        store, bits, F = self.store, self.geo.cluster_bits, self.geo.fanout
        fresh = store.fresh
        n_all = len(contents)
        # Where the pointers live: (list, first position, end position, first cluster).
        if blob.depth == 0:
            assert first == 0 and n_all == 1
            box = [blob.root]
            segments = [(box, 0, 1, 0)]
        else:
            box = None
            segments = []
            i, end = first, first + n_all
            while i < end:  # one walk per map leaf, not per cluster
                leaf, j = self._leaf_slot(blob, i, kind)
                n = min(F - j, end - i)
                segments.append((leaf.children, j, j + n, i))
                i += n
        in_place = []       # (cluster index, holder, position, content)
        new = []            # (holder, first position, end position, first blob cluster): new clusters
        new_contents = []
        for holder, j0, j1, i0 in segments:
            pos = i0 - first
            olds = [p.offset >> bits for p in holder[j0:j1]]
            if not any(olds) or (all(olds) and fresh.isdisjoint(olds)):
                # All empty, or all durable (an overwrite): every cluster is new,
                # and the old ones are released together.
                if olds[0]:
                    store.decref_many(olds)
                new.append((holder, j0, j1, i0))
                new_contents += contents[pos:pos + j1 - j0]
                continue
            for j in range(j0, j1):     # some clusters exist: one by one
                old = holder[j]
                content = contents[pos + j - j0]
                if old.offset:
                    c = old.offset >> bits
                    if c in fresh and store.count(c) == 1:
                        in_place.append((c, holder, j, content))
                        continue
                    store.decref(old)
                new.append((holder, j, j + 1, i0 + j - j0))
                new_contents.append(content)
        # Rewrites in place, in runs of adjacent clusters.
        k = 0
        while k < len(in_place):
            e = k + 1
            while e < len(in_place) and in_place[e][0] == in_place[e - 1][0] + 1:
                e += 1
            run = in_place[k:e]
            for (_, holder, j, _), p in zip(run, store.write_run(run[0][0], data_kind, [r[3] for r in run])):
                holder[j] = p
            k = e
        # New clusters, in as few runs as the allocator gives.
        if new_contents:
            index = None    # the blob cluster of each new one: new[0]'s first + k if they are consecutive
            if source is not None:
                if all(a[3] + a[2] - a[1] == b[3] for a, b in zip(new, new[1:])):
                    index = range(new[0][3], new[0][3] + len(new_contents))
                else:
                    index = [i0 + d for _, j0, j1, i0 in new for d in range(j1 - j0)]
            ptrs, pos = [], 0
            for run_first, n in store.allocate_many(len(new_contents)):
                payload = None
                if index is not None:
                    view, offset, lo, hi = source
                    a = index[pos]
                    if lo <= a and a + n <= hi and index[pos + n - 1] == a + n - 1:
                        cs = self.geo.cluster_size
                        payload = view[a * cs - offset:(a + n) * cs - offset]
                ptrs += store.write_run(run_first, data_kind, new_contents[pos:pos + n], payload)
                pos += n
            pos = 0
            for holder, j0, j1, _ in new:
                holder[j0:j1] = ptrs[pos:pos + j1 - j0]
                pos += j1 - j0
        if box is not None:
            blob.root = box[0]

    def _get_data_ptr(self, blob, i: int, kind) -> Pointer:
        if blob.depth == 0:
            return blob.root
        return self.map_lookup(blob.root, blob.depth, i, kind)

    def map_truncate(self, blob, new_size: int, kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA) -> None:
        """Shrink or extend a clustered blob (R-map-3 holds afterwards)."""
        cs = self.geo.cluster_size
        if new_size >= blob.size:
            self._grow_depth(blob, new_size)
            blob.size = new_size
            return
        keep = -(-new_size // cs)
        # Drop every cluster at or beyond `keep`.
        if blob.depth == 0:
            if keep == 0:
                self.drop_map(blob.root, 0)
                blob.root = NULL
        else:
            blob.root = self._trim(blob.root, blob.depth, keep, kind, data_kind)
        # Zero the tail of the new last cluster.
        if new_size % cs and keep:
            i = keep - 1
            old = self._get_data_ptr(blob, i, kind)
            if not old.is_null:
                data = bytearray(self.store.read_raw(old, data_kind))
                data[new_size % cs:] = bytes(cs - new_size % cs)
                self._store_clusters(blob, i, [data], kind, data_kind)
        blob.size = new_size
        # Remove levels the new size no longer needs: child 0 becomes the root.
        want = self.geo.map_depth(new_size)
        while blob.depth > want:
            node = self.map_copy(blob.root, blob.depth, kind)
            blob.root = node.children[0]
            blob.depth -= 1
        if isinstance(blob.root, MapNode) and all(isinstance(c, Pointer) and c.is_null for c in blob.root.children):
            blob.root = NULL

    def _trim(self, child, level: int, keep: int, kind, data_kind):
        """Null every pointer for clusters >= keep below ``child`` (level >= 1)."""
        F = self.geo.fanout
        span = F ** (level - 1)
        if isinstance(child, Pointer) and child.is_null:
            return child
        if keep <= 0:
            self.drop_map(child, level, kind, data_kind)
            return NULL
        if keep >= span * F:
            return child
        node = self.map_copy(child, level, kind)
        for j in range(F):
            lo = j * span
            if lo >= keep:
                self.drop_map(node.children[j], level - 1, kind, data_kind)
                node.children[j] = NULL
            elif keep < lo + span and level > 1:
                node.children[j] = self._trim(node.children[j], level - 1, keep - lo, kind, data_kind)
        return node

    def map_punch(self, blob, lo: int, hi: int, kind=fmt.KIND_MAP, data_kind=fmt.KIND_DATA) -> None:
        """Make clusters ``lo``..``hi - 1`` of a clustered blob holes: their data
        pointers become null and their references are dropped (a whole subtree
        at once where the range covers it).  The size and depth stay."""
        if lo >= hi:
            return
        if blob.depth == 0:
            if lo == 0:
                self.drop_map(blob.root, 0, kind, data_kind)
                blob.root = NULL
            return
        blob.root = self._punch(blob.root, blob.depth, lo, hi, kind, data_kind)

    def _punch(self, child, level: int, lo: int, hi: int, kind, data_kind):
        """``child`` (level >= 1) with its clusters ``lo``..``hi - 1`` (relative to it) made holes."""
        F = self.geo.fanout
        span = F ** (level - 1)
        if isinstance(child, Pointer) and child.is_null:
            return child
        if lo <= 0 and hi >= span * F:
            self.drop_map(child, level, kind, data_kind)
            return NULL
        node = self.map_copy(child, level, kind)
        for j in range(max(0, lo // span), min(F, -(-hi // span))):
            if level == 1:
                self.drop_map(node.children[j], 0, kind, data_kind)
                node.children[j] = NULL
            else:
                node.children[j] = self._punch(node.children[j], level - 1, lo - j * span, hi - j * span,
                                               kind, data_kind)
        return node

    # -- writing in-memory trees at commit -----------------------------------------------

    def flush_map(self, child, level: int, kind=fmt.KIND_MAP) -> Pointer:
        if isinstance(child, Pointer):
            return child
        if level == 1:     # a map leaf: its children are data pointers
            ptrs = child.children
        else:
            ptrs = [ch if type(ch) is Pointer else self.flush_map(ch, level - 1, kind) for ch in child.children]
        if not any(map(_offset, ptrs)):
            return NULL
        store = self.store
        ptr = store.write_cluster(store.allocate(1), kind, fmt.encode_pointers(ptrs, self.geo))
        store.remember(ptr, kind, list(ptrs))   # map_node would decode exactly this list
        return ptr

    def flush_dir(self, child, level: int) -> Pointer:
        if isinstance(child, Pointer):
            return child
        width = self.geo.pointer_size
        if level == 0:
            for b in child.items:
                if b.inline is None:
                    b.root = self.flush_map(b.root, b.depth)
            items = [b.entry() for b in child.items]
        else:
            for it in child.items:
                it[1] = self.flush_dir(it[1], level - 1)
            items = [fmt.DirBranch(k, c) for k, c in child.items]
        elements = [b.encode(width) for b in items]
        if self._cached(child):
            # The cached sizes decided the splits: they must be the real ones.
            assert sum(map(len, elements)) == child.total, "directory node size cache out of step"
        body = der.sequence(*elements)
        raw = fmt.encode_dir_node(level, items, self.geo, body)
        store = self.store
        ptr = store.write_cluster(store.allocate(1), fmt.KIND_DIR, raw)
        store.remember(ptr, fmt.KIND_DIR, fmt.DirNode(level, tuple(items)))   # what dir_node would decode
        return ptr

    # -- directory: reading ----------------------------------------------------------------

    def dir_lookup(self, root, depth: int, name: str, key: bytes | None = None):
        """The entry named ``name`` (a DirEntry or Blob) or None.

        Each node's first and last keys are checked against the range its
        branch promises (R-dir-2): keys are sorted, so that is O(1) per node and
        a misplaced key is reported rather than read as a missing blob.
        """
        if depth == 0:
            return None
        key = key or fmt.blob_key(name)
        node, level = root, depth - 1
        low, high = b"", None
        while True:
            items, keys = self._items(node, level)
            first = keys[1] if level and len(keys) > 1 else (keys[0] if not level else None)
            if (first is not None and first < low) or (high is not None and keys[-1] >= high):
                raise_code("directory.order", "a directory node holds keys outside its branch's range")
            if level == 0:
                i = bisect.bisect_left(keys, key)
                if i < len(keys) and keys[i] == key:
                    return items[i]
                return None
            i = bisect.bisect_right(keys, key) - 1
            low = keys[i] or low
            if i + 1 < len(keys):
                high = keys[i + 1]
            node = items[i][1] if isinstance(items[i], list) else items[i].child
            level -= 1

    def _items(self, node, level):
        if isinstance(node, DirNode):
            return node.items, node.keys()
        n = self.dir_node(node, level)
        return n.items, n.keys()

    def dir_iter(self, root, depth: int):
        """Every entry, in key order."""
        if depth == 0:
            return
        stack = [(root, depth - 1)]
        while stack:
            node, level = stack.pop()
            items, _ = self._items(node, level)
            if level == 0:
                yield from items
            else:
                for it in reversed(items):
                    stack.append((it[1] if isinstance(it, list) else it.child, level - 1))

    # -- directory: writing ------------------------------------------------------------------

    def dir_path(self, state, key: bytes):
        """Copy the path to the leaf for ``key``; return [(node, index_in_parent)]."""
        if state.dir_depth == 0:
            state.dir_root = DirNode(0, [], [], 0)
            state.dir_depth = 1
        state.dir_root = self.dir_copy(state.dir_root, state.dir_depth - 1)
        path = [(state.dir_root, -1)]
        node = state.dir_root
        while node.level > 0:
            i = node.find(key, right=True) - 1
            child = self.dir_copy(node.items[i][1], node.level - 1)
            node.items[i][1] = child
            path.append((child, i))
            node = child
        return path

    # Item sizes: every change to a node's items goes through these so that its
    # cached ``sizes``/``total`` stay exact (or become unknown, never wrong).

    def _item_len(self, item, level: int) -> int:
        """The encoded length of one directory element (DirEntry or DirBranch)."""
        width = self.geo.pointer_size
        if level == 0:
            b = item
            return fmt.entry_len(len(b.name.encode("utf-8")), b.size,
                                 None if b.inline is None else len(b.inline), b.depth, len(b.extra), width)
        return fmt.tlv_len(fmt.tlv_len(len(item[0])) + fmt.tlv_len(width))

    def _sizes(self, node: DirNode) -> list:
        """``node.sizes``, measured again if unknown or out of step with the items."""
        if node.sizes is None or len(node.sizes) != len(node.items):
            node.sizes = [self._item_len(it, node.level) for it in node.items]
            node.total = sum(node.sizes)
        return node.sizes

    def _cached(self, node: DirNode) -> bool:
        return node.sizes is not None and len(node.sizes) == len(node.items)

    def dir_insert(self, node: DirNode, i: int, item) -> None:
        cached = self._cached(node)
        node.items.insert(i, item)
        if cached:
            n = self._item_len(item, node.level)
            node.sizes.insert(i, n)
            node.total += n

    def dir_pop(self, node: DirNode, i: int):
        cached = self._cached(node)
        item = node.items.pop(i)
        if cached:
            node.total -= node.sizes.pop(i)
        return item

    def dir_set(self, node: DirNode, i: int, item) -> None:
        node.items[i] = item
        self.dir_touch(node, i)

    def dir_touch(self, node: DirNode, i: int) -> None:
        """Item ``i`` changed in place (or was replaced): measure it again."""
        if self._cached(node):
            n = self._item_len(node.items[i], node.level)
            node.total += n - node.sizes[i]
            node.sizes[i] = n

    def dir_fix(self, state, path, touched: int | None = None) -> None:
        """Restore the node size bounds along ``path`` after a leaf changed (R-dir-5).

        ``touched`` is the index of a leaf item changed in place since it was
        last measured (items inserted, removed or replaced through ``dir_insert``,
        ``dir_pop``, ``dir_set`` are measured already)."""
        if touched is not None:
            self.dir_touch(path[-1][0], touched)
        limit = self.geo.dir_body_max
        for depth_i in range(len(path) - 1, -1, -1):
            node, idx = path[depth_i]
            parent = path[depth_i - 1][0] if depth_i else None
            if not node.items:
                if parent is None:
                    state.dir_root, state.dir_depth = NULL, 0
                    return
                self.dir_pop(parent, idx)
                if idx == 0 and parent.items:
                    parent.items[0][0] = b""
                    self.dir_touch(parent, 0)
                continue
            groups = self._split(node, limit)
            if len(groups) == 1:
                continue
            first_low = b"" if parent is None else parent.items[idx][0]
            new_nodes = [DirNode(node.level, g, s, sum(s)) for g, s in groups]
            branches = []
            for j, n in enumerate(new_nodes):
                sep = first_low if j == 0 else (n.items[0].key if n.level == 0 else n.items[0][0])
                if n.level > 0:
                    n.items[0][0] = b""  # an index node's first branch has an empty lowKey
                    self.dir_touch(n, 0)
                branches.append([sep, n])
            if parent is None:
                state.dir_root = DirNode(node.level + 1, branches)   # sizes measured on the next pass
                state.dir_depth += 1
                if state.dir_depth > fmt.MAX_DIR_DEPTH:
                    raise_code("blob.limit", "the directory would exceed 16 levels")
                path.insert(0, (state.dir_root, -1))
                # Re-check the new root on the next pass (it holds few branches).
                return self.dir_fix(state, [(state.dir_root, -1)])
            self.dir_pop(parent, idx)
            for j, br in enumerate(branches):
                self.dir_insert(parent, idx + j, br)
        # Collapse a root index node that has a single child.
        while state.dir_depth > 1:
            root = state.dir_root
            if not isinstance(root, DirNode) or len(root.items) != 1:
                break
            state.dir_root = root.items[0][1]
            state.dir_depth -= 1

    def _split(self, node: DirNode, limit: int):
        """[(items, sizes)]: the node's items in groups that each fit a node."""
        sizes = self._sizes(node)
        total = node.total
        if len(der.encode_length(total)) + 1 + total <= limit and len(sizes) <= fmt.MAX_NODE_ITEMS:
            return [(node.items, sizes)]
        # Split into pieces of about equal encoded size, each within the limit.
        room = limit - 4
        if max(sizes) > room:
            # Only unknown fields kept from another writer (R-dir-4) make an entry this big.
            raise_code("directory.entry", f"a directory entry of {max(sizes)} bytes cannot fit a node "
                                          f"of {limit} bytes")
        pieces = max(-(-total // room), -(-len(sizes) // fmt.MAX_NODE_ITEMS))
        target = -(-total // pieces)
        groups, start, used = [], 0, 0
        for k, s in enumerate(sizes):
            if k > start and (used + s > room or used >= target or k - start >= fmt.MAX_NODE_ITEMS):
                groups.append((node.items[start:k], sizes[start:k]))
                start, used = k, 0
            used += s
        groups.append((node.items[start:], sizes[start:]))
        return groups

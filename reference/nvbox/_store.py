"""Clusters over a block device: verified reads, allocation, reference counts.

Theory of operation
-------------------
The durable image is the tree reachable from the active commit slot; it is
never modified in place (R-cow-1).  A transaction keeps, in memory:

* ``counts``   the counts it has changed (cluster index -> new count); every
               other count is read from the durable refcount tree;
* ``fresh``    clusters allocated by this transaction: not reachable from the
               durable slot, so they may be rewritten in place until commit;
* ``freed``    durable clusters whose count dropped to 0 in this transaction:
               the durable slot still reaches them, so they must not be
               written before the commit is durable (R-alloc-2).

The allocator hands out clusters whose count is 0 in both views and that are
not in ``freed``, lowest first, or grows the image.  On commit the counts are
written into the refcount tree by a fixpoint loop (R-alloc-4): copying a
refcount block allocates a cluster, which changes a count, which may dirty
another block; a block already copied in this transaction is changed in place,
so the loop ends.

This module knows nothing of blobs or directories: it reads and writes
clusters of a given kind, and keeps counts.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import replace

from . import _format as fmt
from .errors import raise_code

_CACHE_NODES = 4096
# Refcount blocks a transaction scans upwards for free clusters (plus one per
# counts_per_block clusters it allocates), and down from the end, before it
# grows the image instead: see reset().
_SCAN_BLOCKS = 4
_TAIL_BLOCKS = 2
# write_run issues one device write per this many bytes of contiguous clusters.
_RUN_BYTES = 4 << 20
# Clusters not in one caller's buffer are written this many bytes at a time: plain
# ones (padded) joined, sealed ones gathered from the seal slots by one writev.
_JOIN_GROUP_BYTES = 1 << 20


class Counter:
    """Statistics a benchmark reports (issue 2): what this handle wrote."""

    def __init__(self):
        self.clusters_written = 0
        self.clusters_read = 0
        self.bytes_written = 0
        self.flushes = 0
        self.commits = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


class ClusterStore:
    """Reads, writes and counts clusters of one image.

    Args:
        dev: the block device.
        header: the decoded header.
        slot: the durable commit slot.
        cipher: an object with ``encrypt(offset, kind, data) -> (ct, nonce, tag)``
            and ``decrypt(offset, kind, ct, nonce, tag) -> data``, or None.
    """

    def __init__(self, dev, header: fmt.Header, slot: fmt.Slot, cipher=None):
        self.dev = dev
        self.header = header
        self.geo = fmt.geometry(header.cluster_bits, slot.encrypted)
        self.cipher = cipher
        self.stats = Counter()
        self._cache: OrderedDict = OrderedDict()
        self._seal_slots = None     # encrypt_run's output buffers, reused (write_run)
        self.scan_limit = _SCAN_BLOCKS    # None: scan every block before growing (compaction)
        self.reset(slot)

    # -- transaction state ---------------------------------------------------

    def reset(self, slot: fmt.Slot) -> None:
        """Forget the transaction; the durable state is ``slot``."""
        self.durable = slot
        self.image_clusters = slot.image_clusters
        self.refcount_root = slot.refcount_root
        self.refcount_depth = slot.refcount_depth
        # The refcount root while it is still a committed node (None once the
        # transaction replaced it by an in-memory node).
        self._ref_root_ptr = slot.refcount_root
        self.counts: dict[int, int] = {}
        self.fresh: set[int] = set()
        self.freed: set[int] = set()
        # Allocator: a heap of candidate free clusters found by scanning durable
        # refcount blocks, and the next block to scan.
        self._candidates: list[int] = []
        self._candidate_set: set[int] = set()
        # Every cluster below the slot's alloc_hint is in use (R-alloc-6): scanning
        # for free clusters starts there, so a full image is not scanned at all.
        self._scan_from = max(slot.alloc_hint, self.geo.header_clusters)
        self._scan_block = self._scan_from // self.geo.counts_per_block
        # Refcount blocks scanned and clusters allocated by this transaction: after
        # the block alloc_hint points into, the last _TAIL_BLOCKS blocks are
        # scanned, then upwards again until scan_limit blocks plus one per
        # block's worth of clusters allocated, and then the image grows
        # (R-alloc-1 allows any free cluster, or growing).  So a small change to
        # a big, full image reads a bounded number of blocks.  alloc_hint stays
        # below the first block the upward scan has not read; the next
        # transaction goes on from there.
        self._scanned = 0
        self._allocated = 0
        self._tail_block = None     # the next block the tail scan reads (downwards)
        self._tail_left = 0
        # Counts changed since the refcount tree last took them (flush_refcounts).
        self._unapplied: set[int] = set()
        # The durable refcount block durable_count read last, as (index, counts):
        # allocation and copy-on-write ask for neighbouring clusters' counts, one
        # call each, and the durable tree cannot change before the next reset().
        self._last_block: tuple = (None, None)
        # Refcount nodes copied in this transaction: block index -> counts, and
        # (level, index) -> pointer list, with the cluster each will occupy.
        self._ref_leaves: dict[int, array] = {}
        self._ref_index: dict[tuple[int, int], list] = {}
        self._ref_home: dict[tuple[int, int], int] = {}

    def end_transaction(self, slot: fmt.Slot) -> None:
        """After a durable commit: freed clusters become allocatable (R-alloc-2).
        The candidate heap carries over as it is (rebuilding it would cost a
        step per free cluster of the image at every commit); only this
        transaction's freed clusters are pushed, and only an image that shrank
        needs its candidates filtered."""
        heap, members = self._candidates, self._candidate_set
        shrank = slot.image_clusters < self.durable.image_clusters
        scan_block, scan_from = self._scan_block, self._scan_from
        freed = [c for c in self.freed if c < slot.image_clusters and c not in members]
        self.reset(slot)
        self._scan_block, self._scan_from = scan_block, scan_from
        if shrank:
            heap = [c for c in heap if c < slot.image_clusters]
            members = set(heap)
            heapq.heapify(heap)
        if len(freed) > len(heap):
            heap.extend(freed)
            heapq.heapify(heap)
        else:
            for c in freed:
                heapq.heappush(heap, c)
        members.update(freed)
        self._candidates, self._candidate_set = heap, members

    # -- verified cluster I/O (R-ptr-2..4) -------------------------------------

    def check_pointer(self, ptr: fmt.Pointer) -> None:
        fmt.check_pointer(ptr, self.geo, self.image_clusters)

    def read_raw(self, ptr: fmt.Pointer, kind: int) -> bytes:
        """The plaintext of the cluster ``ptr`` names, after every check."""
        self.check_pointer(ptr)
        size = self.geo.cluster_size
        data = self.dev.read(ptr.offset, size)
        self.stats.clusters_read += 1
        if len(data) != size:
            raise_code("image.truncated", f"cluster at {ptr.offset} lies past the end of the file")
        if fmt.crc32c(data) != ptr.crc:
            raise_code("cluster.checksum", f"cluster at offset {ptr.offset} does not match its checksum")
        if self.cipher is not None and kind != 0:
            data = self.cipher.decrypt(ptr.offset, kind, data, ptr.nonce, ptr.tag)
        return data

    def read_cached(self, ptr: fmt.Pointer, kind: int, decode):
        """Decode a durable node through a small LRU cache keyed by the pointer."""
        key = (ptr.offset, ptr.crc, ptr.tag, kind)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        value = decode(self.read_raw(ptr, kind))
        self.remember(ptr, kind, value)
        return value

    def remember(self, ptr: fmt.Pointer, kind: int, value) -> None:
        """Cache the decoded form of the node at ``ptr``: one read_cached has
        just checked and decoded, or one this process has just written.  A
        node is immutable once written (R-cow-1), and the key holds its
        checksum (and tag), so the entry is found only through a pointer to
        exactly these bytes; a written node's next copy-on-write then needs
        no read and no decode."""
        self._cache[(ptr.offset, ptr.crc, ptr.tag, kind)] = value
        if len(self._cache) > _CACHE_NODES:
            self._cache.popitem(last=False)

    def seal(self, index: int, kind: int, data: bytes) -> tuple[bytes, fmt.Pointer]:
        """Encrypt (when the image is encrypted) and checksum a cluster for ``index``."""
        offset = index << self.geo.cluster_bits
        if self.cipher is not None and kind != 0:
            data, nonce, tag = self.cipher.encrypt(offset, kind, data)
            return data, fmt.Pointer(offset, fmt.crc32c(data), nonce, tag)
        return data, fmt.Pointer(offset, fmt.crc32c(data))

    def write_cluster(self, index: int, kind: int, data: bytes) -> fmt.Pointer:
        """Write one fresh cluster (R-cow-1: never a durable one)."""
        assert index in self.fresh, "writing a cluster this transaction does not own"
        if len(data) < self.geo.cluster_size:
            data = data.ljust(self.geo.cluster_size, b"\0")
        sealed, ptr = self.seal(index, kind, data)
        self.dev.write(ptr.offset, sealed)
        self.stats.clusters_written += 1
        self.stats.bytes_written += len(sealed)
        return ptr

    def write_run(self, first: int, kind: int, chunks: list, payload=None) -> list[fmt.Pointer]:
        """Write contiguous fresh clusters ``first..``.  ``chunks`` are bytes-like,
        a cluster or less each (a short one is zero padded).  ``payload``, if
        given, is the same bytes as one buffer (whole clusters): a plain image
        writes it as it is, uncopied, one device write per ``_RUN_BYTES``;
        otherwise (and always when encrypted) one device write per
        ``_JOIN_GROUP_BYTES``."""
        n = len(chunks)
        assert self.fresh.issuperset(range(first, first + n)), "writing a cluster this transaction does not own"
        cs, bits = self.geo.cluster_size, self.geo.cluster_bits
        if min(map(len, chunks)) < cs:
            chunks = [c if len(c) == cs else bytes(c).ljust(cs, b"\0") for c in chunks]
            payload = None
        if self.cipher is not None and kind != 0:
            # Sealed a group at a time into reused buffers (each ciphertext
            # followed by its tag), checksummed while they are still in the CPU
            # cache, and written with the tags left out by a gathered write.
            group = max(1, _JOIN_GROUP_BYTES >> bits)
            if self._seal_slots is None or len(self._seal_slots.buffers) < min(n, group):
                # Kept for the store's life, grown to the largest run seen (up to a group).
                self._seal_slots = self.cipher.seal_slots(cs, min(n, group))
            ptrs = []
            for a in range(0, n, group):
                start = (first + a) << bits
                sealed, nonces, tags = self.cipher.encrypt_run(start, cs, kind, chunks[a:a + group], self._seal_slots)
                ends = start + len(sealed) * cs
                ptrs += map(fmt.new_pointer, zip(range(start, ends, cs), map(fmt.crc32c, sealed), nonces, tags))
                self.dev.writev(start, sealed)
                self.stats.bytes_written += ends - start
            self.stats.clusters_written += n
            return ptrs
        # Plain clusters: each CRC straight from the caller's buffer (no copy),
        # the pointers built in C, and whole clusters written from ``payload`` as
        # they are; otherwise the clusters are joined a group at a time (a
        # bounded extra buffer).
        ptrs = list(fmt.plain_pointers(range(first << bits, (first + n) << bits, cs), map(fmt.crc32c, chunks)))
        if payload is not None:
            self._write_payload(first, payload)
        else:
            group = max(1, _JOIN_GROUP_BYTES >> bits)
            for a in range(0, n, group):
                data = b"".join(chunks[a:a + group])
                self.dev.write((first + a) << bits, data)
                self.stats.bytes_written += len(data)
        self.stats.clusters_written += n
        return ptrs

    def _write_payload(self, first: int, payload) -> None:
        """Whole plain clusters ``first..`` from one buffer, uncopied, one device
        write per ``_RUN_BYTES``."""
        bits = self.geo.cluster_bits
        for a in range(0, len(payload), _RUN_BYTES):
            part = payload[a:a + _RUN_BYTES]
            self.dev.write((first << bits) + a, part)
            self.stats.bytes_written += len(part)

    # -- counts ----------------------------------------------------------------

    def count(self, index: int) -> int:
        c = self.counts.get(index)
        if c is not None:
            return c
        return self.durable_count(index)

    @property
    def node_cache(self) -> OrderedDict:
        """Decoded durable nodes by (offset, crc, tag, kind): filled only after
        every check, so still right for another store of the same file and cipher."""
        return self._cache

    def adopt_cache(self, cache: OrderedDict) -> None:
        """Use ``cache`` (another store's ``node_cache``, same file and cipher)."""
        self._cache = cache

    def durable_count(self, index: int) -> int:
        if index >= self.durable.image_clusters:
            return 0
        k, j = divmod(index, self.geo.counts_per_block)
        last, block = self._last_block
        if k != last:
            block = self.durable_block(k)
            self._last_block = (k, block)
        return 0 if block is None else block[j]

    def durable_used(self) -> int:
        """How many clusters have a non-zero durable count: a refcount block at a
        time, the zeros counted in C (one Python step per 2,048 clusters at 4 KiB)."""
        per, total = self.geo.counts_per_block, self.durable.image_clusters
        used = 0
        for k in range(-(-total // per)):
            block = self.durable_block(k)
            if block is not None:
                counts = block[:min(per, total - k * per)]
                used += len(counts) - counts.count(0)
        return used

    def durable_block(self, k: int):
        """Counts of durable refcount block ``k`` (None if it is a hole)."""
        ptr = self.durable_block_pointer(k)
        if ptr is None:
            return None
        return self.read_cached(ptr, fmt.KIND_REFBLOCK, lambda raw: array("H", raw))

    def durable_block_pointer(self, k: int):
        """The durable pointer to refcount block ``k``, or None where the tree has a hole."""
        slot = self.durable
        ptr, level = slot.refcount_root, slot.refcount_depth
        geo = self.geo
        if ptr.is_null:  # only while create bootstraps the first tree
            return None
        while level > 1:
            span = geo.fanout ** (level - 2)       # blocks per child
            node = self.read_cached(ptr, fmt.KIND_REFINDEX, lambda raw: fmt.decode_pointers(raw, geo))
            i = k // span
            if i >= geo.fanout:
                return None
            ptr = node[i]
            k %= span
            if ptr.is_null:
                return None
            level -= 1
        return ptr

    def counts_of(self, first: int, n: int) -> list[int]:
        """``count(i)`` for the clusters ``first .. first + n - 1``, a durable
        refcount block slice at a time (a large write's clusters in C, not one
        call each), with this transaction's counts laid over them."""
        per, limit, end = self.geo.counts_per_block, self.durable.image_clusters, first + n
        out: list[int] = []
        i = first
        while i < end:
            k, j = divmod(i, per)
            stop = min(end, (k + 1) * per)
            top = min(stop, limit)
            block = self.durable_block(k) if i < top else None
            out += (block[j:j + top - i].tolist() + [0] * (stop - top)) if block is not None else [0] * (stop - i)
            i = stop
        counts = self.counts
        if counts and not counts.keys().isdisjoint(range(first, end)):
            for i in range(first, end):
                c = counts.get(i)
                if c is not None:
                    out[i - first] = c
        return out

    def decref_many(self, indices: list[int]) -> None:
        """``decref`` of each cluster in ``indices``.  Runs of consecutive durable
        clusters referenced once (what overwriting a blob replaces) are released
        in bulk; anything else goes one by one."""
        fresh = self.fresh
        a = 0
        while a < len(indices):
            b = a + 1
            while b < len(indices) and indices[b] == indices[b - 1] + 1:
                b += 1
            first, n = indices[a], b - a
            run = range(first, first + n)
            if fresh.isdisjoint(run) and self.counts_of(first, n).count(1) == n:
                self.counts.update(dict.fromkeys(run, 0))
                self._unapplied.update(run)
                self.freed.update(run)      # durable: allocatable after the commit (R-alloc-2)
            else:
                for i in run:
                    self.decref_index(i)
            a = b

    def set_count(self, index: int, value: int) -> None:
        if value > fmt.MAX_REFCOUNT:
            raise_code("refcount.overflow", f"cluster {index} would be referenced {value} times")
        self.counts[index] = value
        self._unapplied.add(index)

    def incref(self, ptr: fmt.Pointer) -> None:
        if not ptr.is_null:
            i = ptr.offset >> self.geo.cluster_bits
            self.set_count(i, self.count(i) + 1)

    def decref(self, ptr: fmt.Pointer) -> int:
        """Drop one reference; return the new count.  A cluster reaching 0 is freed."""
        return self.decref_index(ptr.offset >> self.geo.cluster_bits)

    def decref_index(self, i: int) -> int:
        """``decref`` of cluster ``i``."""
        c = self.count(i)
        if c <= 0:
            raise_code("refcount.tree", f"cluster {i} is referenced but its count is already 0")
        if c == 1:
            self.release(i)
        else:
            self.set_count(i, c - 1)
        return c - 1

    def release(self, i: int) -> None:
        """Cluster ``i``'s count becomes 0: free at once if this transaction
        allocated it (never durable), after the commit otherwise (R-alloc-2)."""
        self.set_count(i, 0)
        if i in self.fresh:
            self.fresh.discard(i)
            self._add_candidate(i)
        else:
            self.freed.add(i)

    def correct_count(self, i: int, value: int) -> None:
        """Set cluster ``i``'s count to what check found it must be (repair).
        A cluster corrected to 0 is referenced by nothing reachable, not even
        from the durable slot, so it is allocatable at once."""
        self.set_count(i, value)
        if value == 0:
            self._add_candidate(i)

    def rescan_from(self, first: int) -> None:
        """Look for free clusters from cluster ``first`` up again, ignoring the
        durable ``alloc_hint`` (repair: a wrong hint is one thing it fixes)."""
        self._scan_from = max(first, self.geo.header_clusters)
        self._scan_block = self._scan_from // self.geo.counts_per_block

    # -- allocation (R-alloc-1..3) ----------------------------------------------

    def _add_candidate(self, i: int) -> None:
        if i not in self._candidate_set:
            self._candidate_set.add(i)
            heapq.heappush(self._candidates, i)

    def _scan_more(self, force: bool = False) -> bool:
        """Scan durable refcount blocks for free clusters until one holds some;
        False when there are no more (or, unless ``force``, when this
        transaction's scan budget is spent: see reset())."""
        per = self.geo.counts_per_block
        limit = self.durable.image_clusters
        while self._scan_block * per < limit:
            if not force and self.scan_limit is not None and self._scanned:
                # Past the block alloc_hint points into: the end of the image
                # first (see _scan_tail), then upwards within the budget.
                if self._scan_tail():
                    return True
                if self._scanned >= self.scan_limit + self._allocated // per:
                    return False
            k = self._scan_block
            self._scan_block += 1
            self._scanned += 1
            if self._scan_block_for_free(k):
                return True
        return False

    def _scan_tail(self) -> bool:
        """Scan up to _TAIL_BLOCKS refcount blocks down from the end of the image.
        Copy-on-write puts what a commit writes at the end, so what the next
        commit frees is mostly there: a full image with a low hole (the usual
        state after small commits) is served without reading every block."""
        per = self.geo.counts_per_block
        if self._tail_block is None:
            self._tail_block = (self.durable.image_clusters - 1) // per
            self._tail_left = _TAIL_BLOCKS
        while self._tail_left > 0 and self._tail_block >= self._scan_block:
            k = self._tail_block
            self._tail_block -= 1
            self._tail_left -= 1
            if self._scan_block_for_free(k):
                return True
        return False

    def _scan_block_for_free(self, k: int) -> bool:
        """Add the free clusters of durable refcount block ``k`` (those at or past
        ``_scan_from``) as candidates; True if there were any."""
        per = self.geo.counts_per_block
        base = k * per
        end = min(per, self.durable.image_clusters - base)
        j = max(0, self._scan_from - base)   # clusters below _scan_from are in use
        found = False
        block = self.durable_block(k)
        if block is None:   # a hole in the refcount tree: every count is 0
            for j in range(j, end):
                self._add_candidate(base + j)
                found = True
            return found
        while j < end:      # the zero counts, found at C speed (a full block has none)
            try:
                j = block.index(0, j, end)
            except ValueError:
                break
            self._add_candidate(base + j)
            found = True
            j += 1
        return found

    def _usable(self, c: int) -> bool:
        return c not in self.freed and c not in self.fresh and self.count(c) == 0

    def _take_candidate(self, n: int):
        """Take the lowest usable free cluster found so far or by scanning more
        refcount blocks; None if there is none within the scan budget.  When the
        image cannot grow by ``n``, every block is scanned before giving up."""
        force = False
        while True:
            while self._candidates:
                c = heapq.heappop(self._candidates)
                self._candidate_set.discard(c)
                if c < self.image_clusters and self._usable(c):
                    self._take(c)
                    return c
            if self._scan_more(force):
                continue
            cap = self.header.capacity_clusters
            if force or not ((cap and self.image_clusters + n > cap)
                             or self.image_clusters + n > fmt.MAX_IMAGE_CLUSTERS):
                return None
            force = True

    def allocate(self, n: int = 1) -> int:
        """Allocate ``n`` contiguous clusters (n > 1 only at the end of the image
        or from adjacent candidates); return the first index."""
        if n == 1:
            c = self._take_candidate(1)
            if c is not None:
                return c
        return self._grow(n)

    def allocate_many(self, n: int) -> list[tuple[int, int]]:
        """Allocate ``n`` clusters as few contiguous runs: [(first, length), ...]."""
        runs = []
        while n > 0:
            first = self._take_candidate(n)
            if first is None:
                runs.append((self._grow(n), n))
                break
            length = 1 + self._take_following(first + 1, n - 1)
            runs.append((first, length))
            n -= length
        return runs

    def _take_following(self, start: int, most: int) -> int:
        """Take the candidates ``start, start + 1, ...`` (at most ``most``) while
        they are consecutive and usable; return how many were taken.  The run
        is popped and checked in bulk; from its first unusable cluster on,
        the rest go back to the heap for the one-by-one path to judge."""
        heap = self._candidates
        stop = start
        while stop - start < most and heap and heap[0] == stop:
            heapq.heappop(heap)
            stop += 1
        if stop == start:
            return 0
        run = range(start, stop)
        if not (stop <= self.image_clusters and self.freed.isdisjoint(run) and self.fresh.isdisjoint(run)
                and not any(self.counts_of(start, stop - start))):
            good = next(k for k, c in enumerate(run) if not (c < self.image_clusters and self._usable(c)))
            for c in run[good:]:
                heapq.heappush(heap, c)     # still in _candidate_set
            run = run[:good]
        self._candidate_set.difference_update(run)
        self.fresh.update(run)
        self.counts.update(dict.fromkeys(run, 1))
        self._unapplied.update(run)
        self._allocated += len(run)
        return len(run)

    def _grow(self, n: int) -> int:
        first = self.image_clusters
        new_total = first + n
        cap = self.header.capacity_clusters
        if cap and new_total > cap:
            raise_code("space.exhausted",
                       f"the fixed image holds {cap} clusters; this change needs {new_total}")
        if new_total > fmt.MAX_IMAGE_CLUSTERS:
            raise_code("space.exhausted", "the image would exceed 2^40 clusters")
        self.image_clusters = new_total
        new = range(first, new_total)   # _take() of each, in bulk
        self.fresh.update(new)
        self.counts.update(dict.fromkeys(new, 1))
        self._unapplied.update(new)
        self._allocated += n
        return first

    def alloc_hint(self) -> int:
        """A cluster index below which every cluster is in use (R-alloc-6).  A free
        cluster is a candidate, not yet scanned, or freed by this transaction;
        the least of those bounds the lowest free cluster from below."""
        bounds = [self.image_clusters, max(self._scan_from, self._scan_block * self.geo.counts_per_block)]
        if self._candidates:
            bounds.append(self._candidates[0])
        if self.freed:
            bounds.append(min(self.freed))
        return min(bounds)

    def _take(self, c: int) -> None:
        self.fresh.add(c)
        self.set_count(c, 1)
        self._allocated += 1

    def shrink_to_fit(self) -> None:
        """Lower ``image_clusters`` to just past the last cluster in use."""
        c = self.image_clusters - 1
        while c >= self.geo.header_clusters and self.count(c) == 0:
            c -= 1
        self.image_clusters = c + 1

    def prune_refcount_leaf(self, k: int) -> bool:
        """Drop refcount block ``k`` when it lies wholly past the image's end (all
        its counts are 0 there), so a compacted image keeps no dead blocks."""
        per = self.geo.counts_per_block
        if self.refcount_depth < 2 or k * per < self.image_clusters or k in self._ref_leaves:
            return False
        if any(k * per <= i < (k + 1) * per for i in self.counts):
            return False
        parent = self._ref_path_node(2, k // self.geo.fanout)
        ptr = parent[k % self.geo.fanout]
        if ptr.is_null:
            return False
        parent[k % self.geo.fanout] = fmt.NULL
        self.decref(ptr)
        return True

    # -- committing the refcount tree (R-alloc-4) -------------------------------

    def flush_refcounts(self) -> None:
        """Apply ``counts`` to the refcount tree (copy-on-write, fixpoint) and
        write the changed refcount nodes.  Sets ``refcount_root``/``depth``."""
        geo = self.geo
        per = geo.counts_per_block
        while True:
            # The tree must cover every cluster, including those this loop adds.
            while geo.refcount_coverage(self.refcount_depth) < self.image_clusters:
                self._add_refcount_level()
            if not self._unapplied:
                homeless = [key for key in self._all_ref_nodes() if key not in self._ref_home]
                if not homeless:
                    break
                for key in homeless:
                    self._ref_home[key] = self.allocate(1)
                continue
            pending, self._unapplied = sorted(self._unapplied), set()
            counts, j = self.counts, 0
            while j < len(pending):     # one refcount block at a time
                k = pending[j] // per
                base = k * per
                end = bisect_left(pending, base + per, j)
                leaf = self._ref_leaf(k)
                if pending[end - 1] - pending[j] == end - j - 1:
                    # Consecutive clusters (a large write's): one slice assignment.
                    leaf[pending[j] - base:pending[end - 1] - base + 1] = \
                        array("H", map(counts.__getitem__, pending[j:end]))
                else:
                    for i in pending[j:end]:
                        leaf[i - base] = counts[i]
                j = end
        self._write_refcount_nodes()

    def _all_ref_nodes(self):
        yield from ((1, k) for k in self._ref_leaves)
        yield from self._ref_index

    def _add_refcount_level(self) -> None:
        """Grow the tree by one level: a new root whose child 0 is the old root."""
        geo = self.geo
        depth = self.refcount_depth
        if depth >= fmt.MAX_REFCOUNT_DEPTH:
            raise_code("space.exhausted", "the refcount tree cannot grow further")
        # Materialise the old root as a copied node so its pointer can be rewritten.
        self._ref_path_node(depth, 0)
        self._ref_index[(depth + 1, 0)] = [fmt.NULL] * geo.fanout
        self.refcount_depth = depth + 1
        self._ref_root_ptr = None

    def _ref_leaf(self, k: int) -> array:
        leaf = self._ref_leaves.get(k)
        if leaf is None:
            self._ref_path_node(1, k)
            leaf = self._ref_leaves[k]
        return leaf

    @property
    def committed_refcount_root(self):
        """The refcount root while it is still the committed node (None once this
        transaction replaced it with an in-memory one)."""
        return self._ref_root_ptr

    def copy_refcount_node(self, level: int, k: int) -> None:
        """Copy the refcount node at ``level`` covering block/child index ``k``
        (and the nodes above it) into this transaction, so the commit writes it
        anew where the allocator puts it (compaction moves it low this way)."""
        self._ref_path_node(level, k)

    def _ref_path_node(self, level: int, k: int):
        """Copy (or create) the refcount node at ``level`` covering block/child
        index ``k``, and every node above it, into this transaction."""
        key = (level, k)
        if level == 1 and k in self._ref_leaves:
            return self._ref_leaves[k]
        if level > 1 and key in self._ref_index:
            return self._ref_index[key]
        geo = self.geo
        durable_ptr = self._current_ref_pointer(level, k)
        if durable_ptr is not None and not durable_ptr.is_null:
            kind = fmt.KIND_REFBLOCK if level == 1 else fmt.KIND_REFINDEX
            # A copy: the cached node stays the durable one.
            if level == 1:
                node = array("H", self.read_cached(durable_ptr, kind, lambda raw: array("H", raw)))
            else:
                node = list(self.read_cached(durable_ptr, kind, lambda raw: fmt.decode_pointers(raw, geo)))
            # Refcount nodes have exactly one parent: the copy inherits the children.
            self.decref(durable_ptr)
        else:
            node = array("H", bytes(geo.cluster_size)) if level == 1 else [fmt.NULL] * geo.fanout
        if level == 1:
            self._ref_leaves[k] = node
        else:
            self._ref_index[key] = node
        if level < self.refcount_depth:
            self._ref_path_node(level + 1, k // geo.fanout)
        return node

    def _current_ref_pointer(self, level: int, k: int):
        """The committed pointer to node (level, k), looked up in copied parents
        first (a parent copied this transaction holds the committed child pointer)."""
        geo = self.geo
        if level == self.refcount_depth:
            return self._ref_root_ptr if k == 0 else None
        parent = self._ref_index.get((level + 1, k // geo.fanout))
        if parent is not None:
            return parent[k % geo.fanout]
        parent_ptr = self._current_ref_pointer(level + 1, k // geo.fanout)
        if parent_ptr is None or parent_ptr.is_null:
            return None
        node = self.read_cached(parent_ptr, fmt.KIND_REFINDEX, lambda raw: fmt.decode_pointers(raw, geo))
        return node[k % geo.fanout]

    def collapse_refcount_root(self) -> bool:
        """Drop a root index node whose only child is child 0 when one level less
        covers the image (compaction shrinks the tree as well as the file)."""
        geo = self.geo
        depth = self.refcount_depth
        if depth < 2 or geo.refcount_coverage(depth - 1) < self.image_clusters \
                or self._ref_leaves or self._ref_index or self._ref_root_ptr is None:
            return False
        root = self._ref_root_ptr
        children = self.read_cached(root, fmt.KIND_REFINDEX, lambda raw: fmt.decode_pointers(raw, geo))
        if children[0].is_null or any(not c.is_null for c in children[1:]):
            return False
        self.refcount_depth = depth - 1
        self._ref_root_ptr = self.refcount_root = children[0]
        self.decref(root)   # child 0 keeps its one reference: from the slot now
        return True

    def _write_refcount_nodes(self) -> None:
        geo = self.geo
        written: dict[tuple[int, int], fmt.Pointer] = {}
        for k, leaf in self._ref_leaves.items():
            ptr = self.write_cluster(self._ref_home[(1, k)], fmt.KIND_REFBLOCK, leaf.tobytes())
            self.remember(ptr, fmt.KIND_REFBLOCK, array("H", leaf))
            written[(1, k)] = ptr
        for level in range(2, self.refcount_depth + 1):
            for (lv, k), ptrs in self._ref_index.items():
                if lv != level:
                    continue
                for j in range(geo.fanout):
                    child = written.get((level - 1, k * geo.fanout + j))
                    if child is not None:
                        ptrs[j] = child
                ptr = self.write_cluster(self._ref_home[(lv, k)], fmt.KIND_REFINDEX, fmt.encode_pointers(ptrs, geo))
                self.remember(ptr, fmt.KIND_REFINDEX, list(ptrs))
                written[(lv, k)] = ptr
        root = written.get((self.refcount_depth, 0))
        if root is not None:
            self.refcount_root = root

    # -- commit ------------------------------------------------------------------

    def write_slot(self, slot: fmt.Slot, mac=None) -> None:
        """Steps 2-4 of R-commit-1: flush, write the slot, flush."""
        self.dev.flush()
        self.stats.flushes += 1
        if mac is not None:
            body = slot.encode_unsigned()
            slot = replace(slot, slot_mac=mac(body))
        raw = slot.encode()
        self.dev.write(fmt.SLOT_OFFSETS[(slot.generation + 1) % 2], raw)
        self.stats.bytes_written += len(raw)
        self.dev.flush()
        self.stats.flushes += 1
        self.stats.commits += 1

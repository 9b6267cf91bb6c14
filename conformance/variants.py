"""Deliberately broken variants of the reference implementation (the corpus's "teeth").

    python -m conformance.variants VARIANT VERB ARGS...     # an adapter, like python -m nvbox.adapter
    python -m conformance.variants --list

Each variant monkeypatches the reference library so that one rule is no longer
enforced (a check skipped, a bound ignored, the wrong slot chosen), then runs the
reference adapter unchanged.  conformance/tests/test_teeth.py runs the invalid
cases against every variant: a case no variant fails tests nothing the reference
would not also do without its check, and a variant no case fails is a hole in
the corpus.

Most variants *suppress* error codes: ``raise_code`` (imported by every module
of the library) is replaced by a filter that returns instead of raising for the
suppressed codes, so the code after the check runs on as if the check had
passed, exactly like an implementation that forgot it.  What happens next
(a wrong answer, another error, or a Python exception, which the adapter turns
into a crash) is what the case must catch.  A few variants change behaviour
instead (the older slot preferred, DER minimality not checked, a lenient check).
"""

from __future__ import annotations

import sys

#: variant -> (description, suppressed error codes)
SUPPRESS = {
    "no-magic-check": ("the header magic is not checked", {"header.magic"}),
    "no-header-crc": ("the header CRC is not checked", {"header.checksum"}),
    "no-version-check": ("any format version is read", {"header.version"}),
    "no-header-fields": ("header field ranges and reserved fields are not checked", {"header.field"}),
    "no-cluster-bits-bound": ("cluster_bits outside 9..21 is accepted", {"header.cluster_size"}),
    "no-extension-checks": ("header extension records are not validated",
                            {"header.extension", "header.extension_required"}),
    "no-slot-fields": ("the chosen slot's field ranges are not checked", {"slot.field"}),
    "incompat-ignored": ("unknown incompatible feature bits are ignored", {"feature.incompatible"}),
    "no-pointer-range": ("pointer alignment and range are not checked", {"pointer.out_of_range", "pointer.misaligned"}),
    "no-pointer-reserved": ("reserved pointer bytes are not checked", {"pointer.reserved"}),
    "no-cycle-check": ("pointer cycles are not detected", {"pointer.cycle"}),
    "crc-unchecked": ("cluster CRCs are not checked", {"cluster.checksum"}),
    "der-unchecked": ("DER subset violations are ignored", {"der.malformed"}),
    "no-dir-node-checks": ("directory node headers are not checked", {"directory.node"}),
    "no-dir-order": ("directory key order is not checked", {"directory.order"}),
    "no-dir-entry-checks": ("directory entry rules are not checked", {"directory.entry"}),
    "no-dir-depth": ("directory levels are not checked", {"directory.depth"}),
    "no-map-depth": ("cluster-map depth is not checked against the size", {"map.depth"}),
    "no-map-tail": ("data beyond a blob's size is not checked", {"map.tail"}),
    "no-snapshot-table-checks": ("snapshot table records are not validated", {"snapshot.table", "snapshot.name"}),
    "no-dir-node-and-der": ("directory node headers and DER are not validated", {"directory.node", "der.malformed"}),
    "no-dir-levels-lax": ("directory levels are not checked, and bodies are decoded leniently",
                          {"directory.depth", "der.malformed", "directory.entry", "directory.order"}),
    "no-low-key-checks": ("branch lowKeys are not validated", {"directory.entry", "directory.order"}),
    "no-slot-none-valid": ("an image without a valid slot is not refused up front", {"slot.none_valid"}),
    "no-truncation-check": ("a file shorter than the image is read anyway", {"image.truncated"}),
    "no-refcount-tree-checks": ("refcount tree shape errors are not reported", {"refcount.tree"}),
    "no-auth": ("AEAD authentication failures are ignored", {"cluster.auth"}),
    "no-keyslot-checks": ("key slot table damage is ignored", {"key.slot_damaged"}),
    "no-key-checks": ("a missing or wrong key is not reported", {"key.missing", "key.invalid"}),
    "snapshot-lookup-ignored": ("an unknown snapshot name is not reported", {"snapshot.not_found"}),
    "no-damaged-slot-report": ("check says nothing about a commit slot that is neither valid nor zeros", {"slot.damaged"}),
}

BEHAVIOUR = {
    "older-slot": "the valid slot with the LOWER generation is used",
    "slot-generation-unchecked": "a slot's generation (>= 1, parity) is not checked",
    "slot-crc-unchecked": "a slot's CRC is not checked",
    "slot-mac-unchecked": "an encrypted image's slot MAC is not verified",
    "lookup-by-iteration": "blobs are found by walking the directory, not by key (branch ranges never matter)",
    "check-does-nothing": "check reports clean for every image it can open",
    "check-open-errors-fail": "check exits 1 with the error when the image cannot be opened",
    "der-minimality-unchecked": "non-minimal DER lengths and integers are accepted",
    "check-undercount-is-leak": "check reports a count that is too low as a leak, not corruption",
    "check-leaks-ignored": "check reports leaks as clean",
    "refcount-wrap": "a count above 65535 wraps instead of failing with refcount.overflow",
    "no-key-file-minimum": "a key file of fewer than 16 bytes is used like any other",
    "header-fields-reordered": "refcount_order, then cluster_bits, are checked before the other header fields",
    "extension-required-last": "the required flag of unknown extensions is looked at only after every record is well formed",
    "keyslots-before-key": "the key slot table is read and validated before a missing key is reported",
    "old-readings": "the codes the spec's older text also allowed: NUL or bad UTF-8 in a name is directory.entry, an "
                    "empty name der.malformed, a 16-byte lowKey directory.order, a key table CRC cluster.checksum, a "
                    "stored snapshot name/metadata out of bounds snapshot.name/snapshot.metadata",
}

#: old-readings: (code, words of the reference's message, the code the older text also allowed)
OLD_READINGS = [
    ("der.malformed", "NUL in UTF8String", "directory.entry"),
    ("der.malformed", "invalid UTF-8", "directory.entry"),
    ("directory.entry", "name of 0 bytes", "der.malformed"),
    ("directory.entry", "lowKey of", "directory.order"),
    ("key.slot_damaged", "does not match its checksum", "cluster.checksum"),
    ("snapshot.table", "snapshot name length", "snapshot.name"),
    ("snapshot.table", "metadata above", "snapshot.metadata"),
    ("snapshot.table", "wrong pointer width", "directory.entry"),
]

VARIANTS = sorted(set(SUPPRESS) | set(BEHAVIOUR))


def _all_modules():
    import importlib
    import pkgutil

    import nvbox
    mods = []
    for info in pkgutil.iter_modules(nvbox.__path__):
        try:
            mods.append(importlib.import_module(f"nvbox.{info.name}"))
        except ImportError:
            pass
    mods.append(nvbox)
    return mods


def _suppress(codes: set) -> None:
    from nvbox import errors

    real = errors.raise_code

    def raise_code(code, message="", **details):
        if code in codes:
            return None
        return real(code, message, **details)

    for mod in _all_modules():
        if getattr(mod, "raise_code", None) is real:
            mod.raise_code = raise_code
    from nvbox import check
    real_problem = check._Walker.problem

    def problem(self, code, message, offset=None, **details):
        if code not in codes:
            real_problem(self, code, message, offset, **details)
    check._Walker.problem = problem


def _older_slot() -> None:
    from nvbox import _format as fmt
    from nvbox import image

    real_valid = fmt.slot_is_valid
    state = {}

    def _load(self):
        raw = self.dev.read(0, fmt.HEADER_AREA)
        gens = []
        for index, off in enumerate(fmt.SLOT_OFFSETS):
            body = raw[off:off + fmt.SECTOR]
            if real_valid(body, index):
                gens.append(int.from_bytes(body[8:16], "little"))
        state["prefer"] = min(gens) if gens else None
        return orig_load(self)

    def slot_is_valid(raw, index):
        ok = real_valid(raw, index)
        if ok and state.get("prefer") is not None:
            return int.from_bytes(raw[8:16], "little") == state["prefer"]
        return ok

    orig_load = image.Image._load
    image.Image._load = _load
    fmt.slot_is_valid = slot_is_valid


def _slot_validity(skip: str) -> None:
    import struct

    from nvbox import _format as fmt

    def slot_is_valid(raw, index):
        if len(raw) < fmt.SECTOR or raw[:8] != fmt.SLOT_MAGIC:
            return False
        if skip != "crc" and struct.unpack_from("<I", raw, 508)[0] != fmt.crc32c(raw[:508]):
            return False
        gen = struct.unpack_from("<Q", raw, 8)[0]
        return skip == "generation" or (gen >= 1 and gen % 2 == (1 if index == 0 else 0))
    fmt.slot_is_valid = slot_is_valid


def _lookup_by_iteration() -> None:
    from nvbox import _tree

    def dir_lookup(self, root, depth, name, key=None):
        for e in self.dir_iter(root, depth):
            if e.name == name:
                return e
        return None
    _tree.Trees.dir_lookup = dir_lookup


def _check_does_nothing() -> None:
    from nvbox import check

    def check_image(image, progress=None):
        return check.CheckResult(image_clusters=image.slot.image_clusters)
    check.check_image = check_image


def _check_open_errors_fail() -> None:
    from nvbox import adapter

    def verb_check(args):
        from nvbox.check import check_image
        with adapter._open(args[0]) as img:
            r = check_image(img).to_json()
        return {"verdict": r["verdict"]}
    adapter.verb_check = verb_check
    adapter.VERBS["check"] = verb_check


def _der_minimality() -> None:
    from nvbox import _der

    def read_tlv(buf, pos, end):
        if pos + 2 > end:
            _der._bad("truncated tag or length")
        tag = buf[pos]
        if tag not in _der._UNIVERSAL and not (tag & 0xC0 == 0x80 and tag & 0x1F != 0x1F):
            _der._bad(f"tag 0x{tag:02x} is outside the subset")
        first = buf[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        elif first == 0x80:
            _der._bad("indefinite length")
        else:
            nbytes = first & 0x7F
            if nbytes > 3:
                _der._bad("length of more than 3 bytes")
            length = int.from_bytes(buf[pos:pos + nbytes], "big")   # no minimality check
            pos += nbytes
        if pos + length > end:
            _der._bad("content runs past its container")
        return tag, pos, pos + length

    def as_integer(buf, cs, ce, maximum=(1 << 64) - 1):
        if ce == cs:
            _der._bad("empty INTEGER")
        if buf[cs] & 0x80:
            _der._bad("negative INTEGER")
        value = int.from_bytes(buf[cs:ce], "big")                  # no minimality, no 9-byte limit
        if value > maximum:
            _der._bad("INTEGER above its limit")
        return value

    _der.read_tlv = read_tlv
    _der.as_integer = as_integer


def _header_fields_reordered() -> None:
    """An implementation that checks the header fields in another order than R-header-9's."""
    from nvbox import _format as fmt
    from nvbox.errors import raise_code
    real = fmt.decode_header

    def decode_header(raw):
        if len(raw) >= fmt.HEADER_AREA and raw[:8] == fmt.MAGIC and \
                int.from_bytes(raw[508:512], "little") == fmt.crc32c(raw[:508]):
            if raw[17] != fmt.REFCOUNT_ORDER:
                raise_code("header.field", "refcount_order (checked first)")
            if not fmt.MIN_CLUSTER_BITS <= raw[16] <= fmt.MAX_CLUSTER_BITS:
                raise_code("header.cluster_size", "cluster_bits (checked second)")
        return real(raw)
    fmt.decode_header = decode_header


def _extension_required_last() -> None:
    """An implementation that validates every extension record before it looks at any
    record's required flag (R-header-10/11 check each record completely, in order)."""
    from nvbox import _format as fmt
    from nvbox.errors import NvboxError
    real = fmt.decode_header

    def without_required(raw):
        out = bytearray(raw)
        pos = int.from_bytes(raw[12:16], "little")
        while 128 <= pos <= 500:
            ext_type, flags, length = int.from_bytes(raw[pos:pos + 2], "little"), raw[pos + 2], \
                int.from_bytes(raw[pos + 4:pos + 8], "little")
            if ext_type == fmt.EXT_END:
                break
            if ext_type not in fmt.KNOWN_EXTENSIONS:
                out[pos + 2] = flags & ~fmt.EXT_REQUIRED
            pos += 8 + (length + 7) // 8 * 8
        out[508:512] = fmt.crc32c(bytes(out[:508])).to_bytes(4, "little")
        return bytes(out)

    def decode_header(raw):
        try:
            return real(raw)
        except NvboxError as exc:
            if exc.code != "header.extension_required":
                raise
            real(without_required(raw))   # a later malformed record is reported instead
            raise
    fmt.decode_header = decode_header


def _keyslots_before_key() -> None:
    from nvbox import crypto
    real = crypto.unlock

    def unlock(image, slot, key):
        if key is None:   # R-slot-7 step 4 says key.missing comes first
            raw = crypto._read_table_unchecked(image, slot)
            crypto._check_table_bytes(raw, slot.keyslots, 1 << image.header.cluster_bits)
            crypto._decode_table(raw)
        return real(image, slot, key)
    crypto.unlock = unlock


def _old_readings() -> None:
    from nvbox import errors
    real = errors.raise_code

    def raise_code(code, message="", **details):
        for old, words, other in OLD_READINGS:
            if code == old and words in (message or ""):
                code = other
                break
        return real(code, message, **details)

    for mod in _all_modules():
        if getattr(mod, "raise_code", None) is real:
            mod.raise_code = raise_code


def _check_verdict(kind: str) -> None:
    from nvbox import check

    def verdict(self):
        if self.corruptions or (self.refcount_errors and kind != "undercount"):
            return "corrupt"
        if kind == "leaks-ignored":
            return "clean"
        return "leaks" if (self.leaks or self.refcount_errors) else "clean"
    check.CheckResult.verdict = property(verdict)


def _refcount_wrap() -> None:
    from nvbox import _store

    def set_count(self, index, value):
        self.counts[index] = value & 0xFFFF
        self._unapplied.add(index)
    _store.ClusterStore.set_count = set_count


def apply(variant: str) -> None:
    if variant in SUPPRESS:
        _suppress(SUPPRESS[variant][1])
    elif variant == "older-slot":
        _older_slot()
    elif variant == "slot-generation-unchecked":
        _slot_validity("generation")
    elif variant == "slot-crc-unchecked":
        _slot_validity("crc")
    elif variant == "slot-mac-unchecked":
        from nvbox import crypto
        crypto.Cipher.verify_slot = lambda self, raw: True
    elif variant == "lookup-by-iteration":
        _lookup_by_iteration()
    elif variant == "check-does-nothing":
        _check_does_nothing()
    elif variant == "check-open-errors-fail":
        _check_open_errors_fail()
    elif variant == "der-minimality-unchecked":
        _der_minimality()
    elif variant == "check-undercount-is-leak":
        _check_verdict("undercount")
    elif variant == "check-leaks-ignored":
        _check_verdict("leaks-ignored")
    elif variant == "refcount-wrap":
        _refcount_wrap()
    elif variant == "header-fields-reordered":
        _header_fields_reordered()
    elif variant == "extension-required-last":
        _extension_required_last()
    elif variant == "old-readings":
        _old_readings()
    elif variant == "keyslots-before-key":
        _keyslots_before_key()
    elif variant == "no-key-file-minimum":
        from nvbox import crypto
        crypto.MIN_KEY_FILE = 0
    else:
        raise SystemExit(f"unknown variant {variant!r}; --list shows them")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        for v in VARIANTS:
            print(f"{v:28} {SUPPRESS[v][0] if v in SUPPRESS else BEHAVIOUR[v]}")
        sys.exit(0 if argv and argv[0] == "--list" else 2)
    apply(argv[0])
    from nvbox import adapter
    sys.argv = ["nvbox.adapter"] + argv[1:]
    adapter._entry()


if __name__ == "__main__":
    main()

"""The nvbox exception hierarchy.

Every error the library raises carries one of the stable, hierarchical codes of
spec/nvbox.md section "Error codes" (for example ``pointer.out_of_range``).  The
registry below is the single table from which the classes are built; the spec's
table, the conformance registry and the CLI's exit codes all derive from it.

``NvboxError`` itself cannot be raised directly: code that raises must pick the
class whose code says what went wrong.  Foreign exceptions (``OSError``,
``ValueError`` from a decoder...) are wrapped at the layer boundary, so callers
catch ``NvboxError`` and never anything else.
"""

from __future__ import annotations

__all__ = ["NvboxError", "ERROR_CODES", "error_class", "raise_code", "code_matches"]


# code -> (class name, meaning, kind).  kind is one of:
#   "corrupt"  the image is damaged or hostile (check exit code 2)
#   "usage"    the caller asked for something impossible (no such blob, bad name...)
#   "state"    the environment refused (locked, read-only, no space, I/O)
#   "unsupported" the image needs something this implementation lacks (exit 63)
#   "key"      encryption keys
ERROR_CODES: dict[str, tuple[str, str, str]] = {
    "image.truncated": ("ImageTruncatedError", "the file is shorter than the structures it must hold", "corrupt"),
    "image.locked": ("ImageLockedError", "another writer holds the image's lock", "state"),
    "image.readonly": ("ImageReadOnlyError", "the image was opened read-only", "state"),
    "image.closed": ("ImageClosedError", "the image handle is closed", "state"),
    "image.exists": ("ImageExistsError", "refusing to overwrite an existing file", "usage"),
    "image.poisoned": ("ImagePoisonedError", "a failed commit left this handle unusable; reopen the image", "state"),
    "image.busy": ("ImageBusyError", "the writer committed so fast that a reader's retries ran out; try again", "state"),
    "image.changed": ("ImageChangedError", "later commits overwrote the commit a read transaction reads; run it again", "state"),
    "image.not_clean": ("ImageNotCleanError", "the operation needs an image that check finds clean (run check and repair first)", "state"),
    "header.magic": ("HeaderMagicError", "the signature is not nvbox's (or was mangled by a text-mode transfer)", "corrupt"),
    "header.version": ("HeaderVersionError", "the format version is not 1", "unsupported"),
    "header.checksum": ("HeaderChecksumError", "the header's CRC-32C does not match", "corrupt"),
    "header.cluster_size": ("HeaderClusterSizeError", "cluster_bits is outside 9..21", "corrupt"),
    "header.field": ("HeaderFieldError", "a header field is out of range or a reserved field is not zero", "corrupt"),
    "header.extension": ("HeaderExtensionError", "a header extension record is malformed", "corrupt"),
    "header.extension_required": ("HeaderExtensionRequiredError", "an unknown header extension is marked required", "unsupported"),
    "slot.none_valid": ("NoValidSlotError", "neither commit slot is valid", "corrupt"),
    "slot.field": ("SlotFieldError", "the chosen commit slot holds an out-of-range field", "corrupt"),
    "slot.damaged": ("SlotDamagedError", "a commit slot is neither valid nor all zeros: the commit it held may be lost",
                     "corrupt"),
    "feature.incompatible": ("IncompatibleFeatureError", "an unknown incompatible feature bit is set", "unsupported"),
    "pointer.misaligned": ("PointerMisalignedError", "a pointer's offset is not a multiple of the cluster size", "corrupt"),
    "pointer.out_of_range": ("PointerOutOfRangeError", "a pointer refers outside the image or into the header area", "corrupt"),
    "pointer.reserved": ("PointerReservedError", "a pointer's reserved bytes are not zero, or a null pointer has data", "corrupt"),
    "pointer.cycle": ("PointerCycleError", "a pointer refers to a cluster already on the path being followed", "corrupt"),
    "cluster.checksum": ("ClusterChecksumError", "a cluster's CRC-32C does not match the pointer that refers to it", "corrupt"),
    "cluster.auth": ("ClusterAuthError", "a cluster failed AEAD authentication (tampered, moved or rolled back)", "corrupt"),
    "der.malformed": ("DerMalformedError", "a DER record breaks the nvbox DER subset", "corrupt"),
    "directory.node": ("DirectoryNodeError", "a directory node header is malformed", "corrupt"),
    "directory.order": ("DirectoryOrderError", "directory keys are not strictly ascending or lie outside their branch", "corrupt"),
    "directory.entry": ("DirectoryEntryError", "a directory entry's fields are inconsistent", "corrupt"),
    "directory.depth": ("DirectoryDepthError", "the directory tree's depth or levels are inconsistent", "corrupt"),
    "map.depth": ("MapDepthError", "a cluster map's depth does not match its blob's size", "corrupt"),
    "map.tail": ("MapTailError", "a cluster map has data beyond its blob's size", "corrupt"),
    "refcount.overflow": ("RefcountOverflowError", "a reference count would exceed 65535", "state"),
    "refcount.tree": ("RefcountTreeError", "the refcount tree is malformed", "corrupt"),
    "blob.not_found": ("BlobNotFoundError", "no blob has that name", "usage"),
    "blob.name": ("BlobNameError", "a blob name must be 1 to 255 bytes of UTF-8 without NUL", "usage"),
    "blob.too_large": ("BlobTooLargeError", "the blob would exceed the format's size limit", "usage"),
    "blob.limit": ("BlobLimitError", "the directory already holds the maximum number of blobs", "usage"),
    "blob.exists": ("BlobExistsError", "a blob with that name already exists (a rename that may not replace it)", "usage"),
    "snapshot.not_found": ("SnapshotNotFoundError", "no snapshot has that name", "usage"),
    "snapshot.exists": ("SnapshotExistsError", "a snapshot with that name already exists", "usage"),
    "snapshot.limit": ("SnapshotLimitError", "the image already holds the maximum number of snapshots", "usage"),
    "snapshot.name": ("SnapshotNameError", "a snapshot name must be 1 to 255 bytes of UTF-8 without NUL", "usage"),
    "snapshot.metadata": ("SnapshotMetadataError", "snapshot metadata must be at most 1024 bytes", "usage"),
    "snapshot.table": ("SnapshotTableError", "the snapshot table is malformed", "corrupt"),
    "space.exhausted": ("SpaceExhaustedError", "the fixed-capacity image has no free cluster left", "state"),
    "key.missing": ("KeyMissingError", "the image is encrypted and no key was given", "key"),
    "key.invalid": ("KeyInvalidError", "no key slot accepts the given key", "key"),
    "key.slot_damaged": ("KeySlotDamagedError", "the key slot table is damaged", "corrupt"),
    "key.last_slot": ("KeyLastSlotError", "refusing to remove the last key slot", "usage"),
    "key.slots_full": ("KeySlotsFullError", "every key slot is in use", "usage"),
    "key.not_encrypted": ("KeyNotEncryptedError", "the image is not encrypted", "usage"),
    "repair.refused": ("RepairRefusedError", "structural corruption makes a safe repair impossible; nothing was changed", "state"),
    "live.busy": ("LiveBusyError", "a live session has files or exports open; it refuses an operation that would change their contents under them (snapshot revert)", "state"),
    "live.refused": ("LiveRefusedError", "the live session's control socket serves only the user who started it", "state"),
    "io.error": ("IOFailureError", "the storage reported an I/O error", "state"),
    "usage.argument": ("UsageError", "an argument is invalid", "usage"),
}


class NvboxError(Exception):
    """Base class of every nvbox error.  ``code`` is the spec's stable error code."""

    code: str = ""
    kind: str = ""

    def __init__(self, message: str | None = None, **details):
        if type(self) is NvboxError:
            raise TypeError("raise a subclass of NvboxError that names the error code")
        self.details = details
        super().__init__(message or ERROR_CODES[self.code][1])

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


_BY_CODE: dict[str, type[NvboxError]] = {}


def _build() -> None:
    for code, (name, meaning, kind) in ERROR_CODES.items():
        cls = type(name, (NvboxError,), {"code": code, "kind": kind, "__doc__": f"``{code}``: {meaning}."})
        cls.__module__ = __name__
        globals()[name] = cls
        __all__.append(name)
        _BY_CODE[code] = cls


_build()


def error_class(code: str) -> type[NvboxError]:
    """Return the exception class for a stable error code."""
    return _BY_CODE[code]


def raise_code(code: str, message: str | None = None, **details):
    """Raise the error registered for ``code``."""
    raise _BY_CODE[code](message, **details)


def code_matches(expected: str, actual: str) -> bool:
    """Hierarchical match: ``pointer`` matches ``pointer.out_of_range``."""
    return actual == expected or actual.startswith(expected + ".")

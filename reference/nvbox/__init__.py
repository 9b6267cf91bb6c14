"""nvbox: a container image format for the persistent state of virtual devices.

The public API::

    import nvbox
    with nvbox.create("vm.nvbox") as img:          # growable, 4 KiB clusters
        img["tpm/permanent"] = b"..."
        with img.transaction():                     # one atomic commit
            img["nic0/eeprom"] = eeprom
            del img["old"]
        img.snapshots.create("before-upgrade")
    with nvbox.open("vm.nvbox") as img:             # read-only, no lock
        data = img["tpm/permanent"]

Every error is an ``nvbox.NvboxError`` whose ``code`` is a stable code from
spec/nvbox.md.
"""

from .blobio import BlobIO
from .blockdev import BlockDevice, CountingDevice, FileDevice, MemoryDevice
from .errors import NvboxError, error_class
from .image import Image
from .opening import create, open_image, parse_size
from .records import BlobStat, SnapshotInfo

open = open_image  # noqa: A001 - nvbox.open mirrors the built-in on purpose

__version__ = "1.0.0.dev0"

__all__ = [
    "BlobIO", "BlobStat", "BlockDevice", "CountingDevice", "FileDevice", "Image", "MemoryDevice",
    "NvboxError", "SnapshotInfo", "create", "error_class", "open", "open_image", "parse_size",
]

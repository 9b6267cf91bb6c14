"""End to end: OVMF boots under QEMU (TCG) with its variable store on an nvbox export.

QEMU's pflash unit 1 is ``-blockdev driver=nbd`` on ``nvbox serve``; OVMF's code
is Debian's OVMF_CODE_4M.fd.  The firmware runs until the UEFI shell prompt
appears on the serial console (by then its boot manager has written the boot
options and the console variables), at most 90 s; the VM is paused and a
snapshot taken (the README's recipe), and QEMU is stopped through QMP.
Afterwards ``nvbox check`` is clean, and the variable store blob differs from
Debian's template only by the variable records the firmware appended, which
the test decodes and prints.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
import uuid

import pytest

import nvbox
from nbd_support import missing_tools, nvbox as nvbox_cli, served

CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
BOOT_TIMEOUT = 90.0
QMP_TIMEOUT = 30.0

REASON = missing_tools("qemu-system-x86_64")
if REASON is None and not (os.path.exists(CODE) and os.path.exists(VARS)):
    REASON = "not installed: ovmf (make tools installs it)"
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# The variable store inside the firmware volume (edk2's VARIABLE_STORE_HEADER
# and variable headers, as OVMF lays them out).
FV_SIGNATURE = b"_FVH"
AUTH_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
STORE_HEADER = struct.Struct("<16sIBBHI")                 # signature, size, format, state, reserved
AUTH_HEADER = struct.Struct("<HBBIQ16sIII16s")            # start id .. vendor guid (60 bytes)
PLAIN_HEADER = struct.Struct("<HBBIII16s")                # start id, state, -, attributes, sizes, guid
START_ID = 0x55AA
STATE_NAMES = {0x3F: "added", 0x3E: "added (deleting)", 0x3C: "deleted", 0x7F: "header only"}


def variables(store: bytes):
    """(offset, end, name, vendor guid, attributes, data size, state) of each
    record in the variable store of an OVMF_VARS image, and the store's end."""
    assert store[40:44] == FV_SIGNATURE, "not a firmware volume"
    header_length = struct.unpack_from("<H", store, 48)[0]
    signature, size, _fmt, _state, _r1, _r2 = STORE_HEADER.unpack_from(store, header_length)
    guid = uuid.UUID(bytes_le=signature)
    assert guid in (AUTH_VARIABLE_GUID, VARIABLE_GUID), f"unknown variable store {guid}"
    header = AUTH_HEADER if guid == AUTH_VARIABLE_GUID else PLAIN_HEADER
    start, end = header_length + STORE_HEADER.size, header_length + size
    found, at = [], (header_length + STORE_HEADER.size + 3) & ~3
    while at + header.size <= end:
        fields = header.unpack_from(store, at)
        if fields[0] != START_ID:
            break
        state, attributes = fields[1], fields[3]
        name_size, data_size, vendor = fields[-3], fields[-2], uuid.UUID(bytes_le=fields[-1])
        name = store[at + header.size:at + header.size + name_size].decode("utf-16-le").rstrip("\0")
        record_end = at + header.size + name_size + data_size
        found.append((at, record_end, name, vendor, attributes, data_size, state))
        at = (record_end + 3) & ~3
    return start, end, found


def changed_ranges(a: bytes, b: bytes):
    ranges, start = [], None
    for i in range(len(a)):
        if (a[i] != b[i]) != (start is not None):
            if start is None:
                start = i
            else:
                ranges.append((start, i))
                start = None
    if start is not None:
        ranges.append((start, len(a)))
    return ranges


def qmp(path, *commands):
    """Run QMP ``commands`` on the monitor socket ``path``; their replies."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(QMP_TIMEOUT)
        s.connect(path)
        f = s.makefile("rw")
        json.loads(f.readline())                            # the greeting
        replies = []
        for cmd in ({"execute": "qmp_capabilities"},) + commands:
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "event" not in msg:
                    replies.append(msg)
                    break
        return replies[1:]


def test_ovmf_boots_with_its_variable_store_on_an_nvbox_export(tmp_path):
    template = open(VARS, "rb").read()
    image = str(tmp_path / "vm.nvbox")
    with nvbox.create(image) as img:
        img["uefi/vars"] = template
        start_generation = img.generation
    serial, qmp_path = tmp_path / "serial.log", str(tmp_path / "qmp.sock")
    with served(image, tmp_path / "nbd.sock", "--export", "uefi/vars") as server:
        qemu = subprocess.Popen([
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-display", "none", "-m", "256",
            "-blockdev", f"driver=file,node-name=code,filename={CODE},read-only=on",
            "-blockdev", f"driver=nbd,node-name=vars,server.type=unix,server.path={server.socket},export=uefi/vars",
            "-machine", "pflash0=code,pflash1=vars",
            "-serial", f"file:{serial}", "-qmp", f"unix:{qmp_path},server=on,wait=off",
        ], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + BOOT_TIMEOUT
            while b"Shell>" not in (serial.read_bytes() if serial.exists() else b""):
                assert qemu.poll() is None, f"QEMU exited {qemu.returncode}: {qemu.stdout.read()!r}"
                assert time.monotonic() < deadline, f"no UEFI shell within {BOOT_TIMEOUT:.0f} s: " \
                                                    f"{serial.read_bytes()[-500:]!r}"
                time.sleep(0.5)
            # A snapshot of the device state while the VM is paused: stopping the VM
            # flushes its block devices (an NBD flush: a commit), then the snapshot
            # is taken through the served image's control socket.
            assert qmp(qmp_path, {"execute": "stop"}) == [{"return": {}}]
            nvbox_cli("snapshot", "create", image, "paused")
            with nvbox.open(image) as img:
                assert img.snapshots.view("paused").read("uefi/vars") == img["uefi/vars"] != template
            # quit: QEMU flushes its block devices and exits.
            assert qmp(qmp_path, {"execute": "quit"}) == [{"return": {}}]
            assert qemu.wait(timeout=QMP_TIMEOUT) == 0
        finally:
            if qemu.poll() is None:
                qemu.kill()
            qemu.wait(timeout=QMP_TIMEOUT)
    check = nvbox_cli("check", image)
    assert b"No errors were found" in check.stdout
    with nvbox.open(image) as img:
        after = img["uefi/vars"]
        generations = img.generation - start_generation
    assert len(after) == len(template) and after != template and generations >= 1

    start, end, records = variables(after)
    ranges = changed_ranges(template, after)
    print(f"\nOVMF variable store: {sum(b - a for a, b in ranges)} bytes changed in {len(ranges)} ranges, "
          f"{ranges[0][0]:#x}..{ranges[-1][1]:#x}, in {generations} commits; store {start:#x}..{end:#x}; "
          f"{len(records)} variable records written by the firmware:")
    for at, record_end, name, vendor, attributes, data_size, state in records:
        print(f"  {at:#07x} {name:<24} {vendor} attrs={attributes:#x} data={data_size:4d} B "
              f"{STATE_NAMES.get(state, hex(state))}")
    # The template's store is empty: every record is the firmware's, and every
    # changed byte lies inside one of them (the rest of the store stays erased).
    assert variables(template)[2] == []
    assert records and all(state in STATE_NAMES for *_, state in records)
    last_end = records[-1][1]
    assert start <= ranges[0][0] and ranges[-1][1] <= last_end <= end
    assert after[last_end:end].count(0xFF) == end - last_end
    assert after[:start] == template[:start] and after[end:] == template[end:]
    live = {r[2] for r in records if r[6] in (0x3F, 0x3E)}
    assert {"BootOrder", "Boot0000"} <= live, live          # the boot manager's boot options

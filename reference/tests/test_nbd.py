"""``nvbox serve`` with the real clients: qemu-img, qemu-io, nbdinfo and libnbd's nbdsh.

Every server is a real nbdkit running nvbox's plugin, started by the test and
stopped by its pid (nbd_support.py).  The OVMF boot is in test_nbd_ovmf.py.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import time

import pytest

import nvbox
import nvbox.crypto
from nvbox.check import check_image
from nbd_support import NBD_PYTHON, PausingClient, missing_tools, nbdsh, nvbox as nvbox_cli, run, served, start

REASON = missing_tools("qemu-img", "qemu-io", "nbdinfo", "nbdsh")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
KiB = 1024


def make_image(path, blobs: dict, snapshot=None, **create_args) -> str:
    with nvbox.create(str(path), **create_args) as img:
        for name, data in blobs.items():
            img[name] = data
        if snapshot:
            img.snapshots.create(snapshot)
    return str(path)


def blob(image, name, snapshot=None) -> bytes:
    """The blob as a reader sees it: the last commit (``nvbox get``)."""
    args = ["get", image, name] + (["--snapshot", snapshot] if snapshot else [])
    return nvbox_cli(*args).stdout


def committed(image, name, key=None) -> bytes:
    """The blob in the image's last commit, read by the library as any reader."""
    with nvbox.open(image, "r", key=key) as img:
        return img[name]


def used_clusters(image) -> int:
    with nvbox.open(image, "r") as img:
        return img.info()["used_clusters"]


def verdict(image, key=None) -> str:
    """``nvbox check``'s verdict: clean, leaks or corrupt."""
    with nvbox.open(image, "r", key=key) as img:
        return check_image(img).verdict


def qemu_io(uri, *commands, read_only=False, check=True):
    # -d unmap: pass discards on to the server (qemu drops them otherwise).
    argv = ["qemu-io", "-f", "raw"] + (["-r"] if read_only else ["-d", "unmap"])
    for c in commands:
        argv += ["-c", c]
    return run(*argv, uri, check=check)


def running(pid) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_pid(pid) -> None:
    """Stop a forked server by its pid: SIGTERM, SIGKILL if it is still there after 30 s."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running(pid):
        os.kill(pid, signal.SIGKILL)


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_qemu_img_info_and_convert_of_ovmf_vars(tmp_path):
    template = open(OVMF_VARS, "rb").read() if os.path.exists(OVMF_VARS) else bytes(range(256)) * 2112
    image = make_image(tmp_path / "vm.nvbox", {"uefi/vars": bytes(len(template)), "other": b"x" * 100})
    with served(image, tmp_path / "s") as server:
        assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o600
        info = run("qemu-img", "info", "--output", "json", server.uri("uefi/vars")).stdout
        assert b'"virtual-size": %d' % len(template) in info
        source = tmp_path / "vars.fd"
        source.write_bytes(template)
        # -n: the export exists with its size (an export never grows or is created).
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, server.uri("uefi/vars"))
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", source, server.uri("uefi/vars"))
        # qemu-img closes with a flush: a reader sees the converted blob while it is served.
        assert committed(image, "uefi/vars") == template
        assert committed(image, "other") == b"x" * 100
    assert verdict(image) == "clean"


def test_qemu_io_patterns_flush_and_get(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(256 * KiB)}, cluster_size=4096)
    with served(image, tmp_path / "s", "--commit-interval", "3600") as server:
        uri = server.uri("dev")
        out = qemu_io(uri, "write -P 0xab 0 64k", "write -P 0xcd 70001 5000", "flush",
                      "read -P 0xab 0 64k", "read -P 0xcd 70001 5000", "read -P 0 65536 4465").stdout
        assert b"Pattern verification failed" not in out
        expected = bytearray(256 * KiB)
        expected[0:64 * KiB] = b"\xab" * (64 * KiB)
        expected[70001:75001] = b"\xcd" * 5000
        assert blob(image, "dev") == expected
        # Zero and trim go to the same transaction and punch holes (clusters are
        # freed); a reader sees them after the flush.
        used = used_clusters(image)
        qemu_io(uri, "write -z 0 32k", "discard 32k 32k", "flush", "read -P 0 0 64k")
        expected[0:64 * KiB] = bytes(64 * KiB)
        assert committed(image, "dev") == expected
        assert used_clusters(image) <= used - 16            # the 16 data clusters of the first 64 KiB
    assert nvbox_cli("check", image).returncode == 0


def test_nbdinfo_lists_every_export_with_a_description(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"uefi/vars": b"v" * 8192, "tpm/permanent": b"t" * 3000},
                       snapshot="base")
    with served(image, tmp_path / "s") as server:
        listing = run("nbdinfo", "--list", server.uri()).stdout.decode()
        for name, size in (("uefi/vars", 8192), ("tpm/permanent", 3000)):
            assert f'export="{name}":' in listing
            assert f"description: blob '{name}', {size} bytes, read-write" in listing
            assert f'export="{name}@base":' in listing
            assert f"description: blob '{name}' of snapshot 'base', {size} bytes, read-only" in listing
        # Unknown names are refused at the handshake with the error the client reports.
        refused = run("qemu-img", "info", server.uri("nope"), check=False)
        assert refused.returncode != 0 and b"Requested export not available" in refused.stderr
        refused = nbdsh(server.uri("nope@base"), "pass", check=False)
        assert refused.returncode != 0 and b"has no export named 'nope@base'" in refused.stderr
        # Two blobs and no --export: no default export.
        assert run("qemu-img", "info", server.uri(), check=False).returncode != 0


def test_export_option_limits_what_is_served(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"a": b"A" * 5000, "b": b"B" * 6000}, snapshot="s1")
    with served(image, tmp_path / "s", "--export", "b", "--export", "a@s1") as server:
        listing = run("nbdinfo", "--list", server.uri()).stdout.decode()
        assert listing.count("export=") == 2 and 'export="b":' in listing and 'export="a@s1":' in listing
        assert run("qemu-img", "info", server.uri("a"), check=False).returncode != 0
        # The first --export is the default export (the empty name).
        nbdsh(server.uri(), "assert h.get_size() == 6000")


def test_snapshot_commands_while_served_and_read_only_snapshot_export(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": b"\x11" * (64 * KiB)})
    with served(image, tmp_path / "s", "--commit-interval", "3600") as server:
        qemu_io(server.uri("dev"), "write -P 0x22 0 16k", "flush")
        # The served image's lock is held: the command goes through the control socket.
        nvbox_cli("snapshot", "create", image, "before")
        qemu_io(server.uri("dev"), "write -P 0x33 0 16k", "flush")
        listed = nvbox_cli("snapshot", "list", image).stdout.decode()
        assert "before" in listed
        snap_uri = server.uri("dev@before")
        qemu_io(snap_uri, "read -P 0x22 0 16k", "read -P 0x11 16k 48k", read_only=True)
        denied = nbdsh(snap_uri, "assert h.is_read_only()\nh.pwrite(b'x' * 512, 0)", check=False)
        assert denied.returncode != 0 and b"Operation not permitted" in denied.stderr
        nvbox_cli("snapshot", "rename", image, "before", "v1")
        qemu_io(server.uri("dev@v1"), "read -P 0x22 0 16k", read_only=True)
        nvbox_cli("snapshot", "delete", image, "v1")
        assert b"dev@v1" not in run("nbdinfo", "--list", server.uri()).stdout
        assert committed(image, "dev")[:16 * KiB] == b"\x33" * (16 * KiB)
    assert verdict(image) == "clean"
    assert nvbox_cli("snapshot", "list", image).stdout.count(b"v1") == 0


def test_fua_and_flush_commit_other_writes_wait_for_the_interval(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(64 * KiB)})
    with served(image, tmp_path / "s", "--commit-interval", "3600") as server:
        client = PausingClient(server.uri("dev"), """
assert h.can_fua() and h.can_multi_conn() and h.can_flush() and h.can_trim()
h.pwrite(b'\\x5a' * 4096, 0, nbd.CMD_FLAG_FUA)
h.pwrite(b'\\x6b' * 4096, 8192)
h2 = nbd.NBD()
h2.connect_uri(h.get_uri())
assert h2.pread(4096, 8192) == b'\\x6b' * 4096     # another connection sees the unflushed write
pause()
h2.flush()                                      # a flush on any connection commits every write
pause()
h.pwrite(b'\\x7c' * 4096, 16384)
h2.shutdown()
pause()
""")
        try:
            client.paused()
            # The FUA write was durable when it answered; the plain one is not committed yet.
            assert committed(image, "dev")[:4096] == b"\x5a" * 4096
            assert committed(image, "dev")[8192:12288] == bytes(4096)
            client.resume()
            client.paused()
            assert committed(image, "dev")[8192:12288] == b"\x6b" * 4096
            client.resume()
            client.paused()
            # One connection of the client is still open: no commit yet.
            assert committed(image, "dev")[16384:20480] == bytes(4096)
            client.resume()
            client.finish()
        finally:
            client.kill()
        # The last connection closed: its writes are committed.  A disconnect has no
        # reply in NBD, so the client is gone before nbdkit has run the plugin's
        # close (where the commit happens): wait for that commit.
        wait_for(lambda: committed(image, "dev")[16384:20480] == b"\x7c" * 4096,
                 "the commit at the last disconnect")


def test_unflushed_writes_commit_within_the_interval_and_at_sigterm(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(32 * KiB)})
    with served(image, tmp_path / "s", "--commit-interval", "0.2") as server:
        client = PausingClient(server.uri("dev"), "h.pwrite(b'\\x7c' * 4096, 0)\npause()\n")
        try:
            client.paused()
            wait_for(lambda: committed(image, "dev")[:4096] == b"\x7c" * 4096, "the interval commit")
            client.resume()
            client.finish()
        finally:
            client.kill()
    slow = make_image(tmp_path / "slow.nvbox", {"dev": bytes(32 * KiB)})
    server = start(slow, tmp_path / "s2", "--commit-interval", "3600")
    try:
        client = PausingClient(server.uri("dev"), "h.pwrite(b'\\x7d' * 4096, 4096)\npause()\n")
        client.paused()
        os.kill(server.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
        client.kill()
    finally:
        server.stop()
    assert committed(slow, "dev")[4096:8192] == b"\x7d" * 4096
    assert not os.path.exists(tmp_path / "s2")         # the server removed its socket


def test_commits_hold_whole_requests_of_concurrent_clients(tmp_path):
    """Two clients overwrite the same 1 MiB with their own byte while the
    committer commits every 10 ms: every commit a reader sees holds one whole
    request there, never parts of two."""
    size = 1024 * KiB
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(size)})
    with served(image, tmp_path / "s", "--commit-interval", "0.01") as server:
        writers = [PausingClient(server.uri("dev"), f"pause()\nfor i in range(150):\n"
                                                    f"    h.pwrite(b'\\x{byte:02x}' * {size}, 0)\n")
                   for byte in (0xAA, 0xBB)]
        try:
            for w in writers:
                w.paused()
            for w in writers:
                w.resume()
            seen = set()
            while any(w.proc.poll() is None for w in writers):
                region = committed(image, "dev")
                assert region.count(region[0]) == size, "a commit mixes two requests"
                seen.add(region[0])
            for w in writers:
                w.finish()
        finally:
            for w in writers:
                w.kill()
    assert seen & {0xAA, 0xBB}, seen                      # commits were seen while both wrote


def test_errors_map_to_nbd_errnos(tmp_path):
    data = random.Random(16).randbytes(32 * KiB)
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(64 * KiB), "bad": data})
    with open(image, "r+b") as f:
        at = f.read().find(data[:4096])                  # the blob's first cluster in the file
        assert at > 0
        f.seek(at + 100)
        f.write(b"\xff\x00\xff")                          # one data cluster of "bad" now fails its CRC
    before = committed(image, "dev")
    with served(image, tmp_path / "s") as server:
        past_end = nbdsh(server.uri("dev"), "h.pwrite(b'x' * 4096, 62 * 1024)", check=False)
        assert past_end.returncode != 0 and b"No space left on device" in past_end.stderr
        assert nbdsh(server.uri("dev"), "assert h.get_size() == 65536").returncode == 0
        damaged = nbdsh(server.uri("bad"), "h.pread(4096, 0)", check=False)
        assert damaged.returncode != 0 and b"Input/output error" in damaged.stderr
        # Only that cluster: the rest of the blob reads.
        nbdsh(server.uri("bad"), f"assert h.pread(4096, 4096) == {data[4096:8192]!r}")
    assert committed(image, "dev") == before                 # the export did not grow; nothing was lost

    full = make_image(tmp_path / "full.nvbox", {}, capacity=256 * KiB)
    with nvbox.open(full, "rw") as img:
        img.write("dev", 0, b"\x01")
        img.truncate("dev", 1024 * KiB)                   # a sparse blob larger than the image can hold
    with served(full, tmp_path / "f") as server:
        nospace = qemu_io(server.uri("dev"), "write -P 0x42 0 512k", "flush", check=False)
        assert b"No space left on device" in nospace.stdout + nospace.stderr
    assert verdict(full) == "clean"


def test_read_only_server_on_a_local_tcp_port(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": b"\x09" * 8192})
    pid_file = tmp_path / "pid"
    out = nvbox_cli("serve", "--fork", "--port", "0", "--read-only", "--pid-file", pid_file, image).stdout.decode()
    pid = int(pid_file.read_text())
    try:
        uri = out.split()[0]
        assert uri.startswith("nbd://127.0.0.1:")         # the loopback only, unless --bind
        qemu_io(uri.rstrip("/") + "/dev", "read -P 0x09 0 8k", read_only=True)
        denied = nbdsh(uri.rstrip("/") + "/dev", "h.pwrite(b'x', 0)", check=False)
        assert b"Operation not permitted" in denied.stderr
        # A read-only server holds no lock: a writer may change the image meanwhile.
        nvbox_cli("put", image, "new", "-", input=b"n")
    finally:
        stop_pid(pid)
    assert committed(image, "dev") == b"\x09" * 8192 and committed(image, "new") == b"n"


def test_serve_refuses_bad_options(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": b"d"})
    both = nvbox_cli("serve", "--socket", tmp_path / "s", "--port", "0", image, check=False)
    assert both.returncode == 1 and b"exactly one of --socket PATH and --port N" in both.stderr
    (tmp_path / "file").write_text("not a socket")
    taken = nvbox_cli("serve", "--socket", tmp_path / "file", image, check=False)
    assert taken.returncode == 1 and b"exists and is not a socket" in taken.stderr
    assert (tmp_path / "file").read_text() == "not a socket"


def test_second_server_and_writers_get_image_locked(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": b"d" * 4096})
    with served(image, tmp_path / "s"):
        second = nvbox_cli("serve", "--socket", tmp_path / "s2", image, check=False)
        assert second.returncode == 1 and b"image.locked" in second.stderr
        put = nvbox_cli("put", image, "x", "-", input=b"x", check=False)
        assert put.returncode == 1 and b"image.locked" in put.stderr
        again = nvbox_cli("serve", "--socket", tmp_path / "s", image, check=False)
        assert again.returncode == 1 and b"already listens" in again.stderr


def test_fork_returns_once_serving_and_keys_stay_off_the_command_line(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    image = str(tmp_path / "enc.nvbox")
    nvbox_cli("create", "--encrypt", "--key-file", key, image)
    nvbox_cli("put", "--key-file", key, image, "tpm/permanent", "-", input=b"secret state " * 100)
    no_key = nvbox_cli("serve", "--fork", "--socket", tmp_path / "s", image, check=False)
    assert no_key.returncode == 1 and b"key.missing" in no_key.stderr and not os.path.exists(tmp_path / "s")
    pid_file = tmp_path / "pid"
    out = nvbox_cli("serve", "--fork", "--socket", tmp_path / "s", "--pid-file", pid_file, "--key-file", key,
                    image).stdout.decode()
    pid = int(pid_file.read_text())
    try:
        assert f"pid={pid}" in out and "nbd+unix:///?socket=" in out
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            nbdkit_pid = int(f.read())
        with open(f"/proc/{nbdkit_pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[0] == b"nbdkit" and f"key-file={key}".encode() in argv   # the file's name, not the key
        data = nbdsh(f"nbd+unix:///tpm/permanent?socket={tmp_path / 's'}", "print(h.pread(1300, 0))").stdout
        assert b"secret state " in data
    finally:
        stop_pid(pid)
    assert verdict(image, nvbox.crypto.Key.from_key_file(key)) == "clean"


def test_kill_9_mid_write_keeps_every_flushed_write(tmp_path):
    image = make_image(tmp_path / "vm.nvbox", {"dev": bytes(4096 * KiB)})
    server = start(image, tmp_path / "s", "--commit-interval", "0.05")
    writer = None
    try:
        qemu_io(server.uri("dev"), "write -P 0xa1 0 1M", "flush")
        # Unflushed writes into the second MiB until the server dies, committed by the interval.
        script = (f"h.set_strict_mode(0)\nh.connect_uri({server.uri('dev')!r})\ni = 0\n"
                  "while True:\n"
                  "    h.pwrite(bytes([i % 255 + 1]) * 4096, 1048576 + (i % 256) * 4096)\n"
                  "    i += 1\n")
        writer = subprocess.Popen([NBD_PYTHON, "-m", "nbd", "-c", script],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: committed(image, "dev")[1024 * KiB:1024 * KiB + 4] != bytes(4), "an interval commit")
        assert writer.poll() is None                     # still writing when the server dies
        os.kill(server.nbdkit_pid(), signal.SIGKILL)
        server.proc.wait(timeout=30)
    finally:
        server.stop(signal.SIGKILL)
        if writer is not None:
            writer.kill()
            writer.wait(timeout=30)
    assert verdict(image) in ("clean", "leaks")           # leaked clusters at most, never damage
    data = committed(image, "dev")
    assert data[:1024 * KiB] == b"\xa1" * (1024 * KiB)
    # Every 4 KiB block of the second MiB holds one whole write's pattern or zeros.
    for off in range(1024 * KiB, 2048 * KiB, 4 * KiB):
        block = data[off:off + 4 * KiB]
        assert block == bytes([block[0]]) * len(block)
    # The next server replaces the dead one's sockets and serves the committed state.
    with served(image, tmp_path / "s") as again:
        qemu_io(again.uri("dev"), "read -P 0xa1 0 1M", read_only=True)

"""Describe the machine a benchmark ran on, to store beside the results."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
import sys


def _first(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _filesystem(path: str) -> dict:
    """File system type, device and mount options of the mount holding `path`."""
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
                    if best is None or len(mnt) >= len(best["mount"]):
                        best = {"device": dev, "mount": mnt, "type": fstype, "options": opts}
    except OSError:
        pass
    st = os.statvfs(path)
    info = best or {}
    info.update({"path": path, "block_size": st.f_bsize,
                 "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize})
    return info


def describe(bench_dir: str = ".") -> dict:
    """CPU, cores, RAM, OS, kernel, Python, qemu-img/qemu-io, SQLite, strace, and the file
    system of `bench_dir` (where the stores under test live)."""
    return {
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": _ram_bytes(),
        "os": _os_release(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "qemu_img": _first(["qemu-img", "--version"]),
        "qemu_io": _first(["qemu-io", "--version"]),
        "strace": _first(["strace", "-V"]),
        "filesystem": _filesystem(bench_dir),
    }


if __name__ == "__main__":
    import json
    print(json.dumps(describe(sys.argv[1] if len(sys.argv) > 1 else "."), indent=2))

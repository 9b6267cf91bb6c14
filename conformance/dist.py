"""Build the release archive of the corpus: conformance/dist/nvbox-conformance-<suite version>.tar.gz.

    python -m conformance.dist [--out DIR] [--no-check]

The archive holds cases/, schema/, registry/, README.md, COVERAGE.md, CHANGES.md
and runner.py under ``nvbox-conformance-<version>/``, with every member's
timestamp, owner and mode fixed so the same corpus always gives the same bytes.
A SHA256SUMS file (GNU coreutils format: ``sha256sum -c SHA256SUMS`` checks it)
lists the archive and every file inside it.  Before building, the corpus is
checked to be current (``generate --check``) and valid.  dist/ is not committed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from conformance import SUITE_VERSION

HERE = Path(__file__).resolve().parent
CONTENTS = ["README.md", "COVERAGE.md", "CHANGES.md", "cases", "schema", "registry", "runner.py", "__init__.py",
            "__main__.py"]
MTIME = 1767225600


def _files():
    for name in CONTENTS:
        p = HERE / name
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts)
        elif p.is_file():
            yield p


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"nvbox-conformance-{SUITE_VERSION}"
    archive = out_dir / f"{prefix}.tar.gz"
    sums = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in _files():
            rel = p.relative_to(HERE).as_posix()
            data = p.read_bytes()
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            sums.append((hashlib.sha256(data).hexdigest(), f"{prefix}/{rel}"))
    with open(archive, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=MTIME) as gz:
            gz.write(buf.getvalue())
    lines = [f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}"]
    lines += [f"{h}  {n}" for h, n in sums]
    (out_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return archive


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.dist")
    ap.add_argument("--out", type=Path, default=HERE / "dist")
    ap.add_argument("--no-check", action="store_true", help="skip generate --check and validate")
    args = ap.parse_args(argv)
    if not args.no_check:
        for cmd in (["-m", "conformance.generate", "--check"], ["-m", "conformance", "validate"]):
            r = subprocess.run([sys.executable, *cmd], cwd=HERE.parent)
            if r.returncode:
                print(f"refusing to build: {' '.join(cmd)} failed", file=sys.stderr)
                return 1
    archive = build(args.out)
    print(f"{archive} ({archive.stat().st_size} bytes); {args.out / 'SHA256SUMS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Commands between an image and a directory of files: import, export."""

from __future__ import annotations

import os

import click

from ..errors import raise_code
from .common import CONTEXT, emit_json, human_size, image_command, read_file

__all__ = ["collect_files", "export", "import_"]


# -- import / export -----------------------------------------------------------------------

def collect_files(paths) -> list[tuple[str, str]]:
    """(blob name, file path) for FILE and DIR arguments, sorted by name.

    A FILE becomes a blob named by its base name; a DIR contributes every regular
    file below it, named by its path relative to DIR with '/' separators.
    """
    out: dict[str, str] = {}
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for fname in sorted(files):
                    full = os.path.join(root, fname)
                    if not os.path.isfile(full):
                        continue
                    rel = os.path.relpath(full, p).replace(os.sep, "/")
                    _add_name(out, rel, full)
        elif os.path.exists(p):
            _add_name(out, os.path.basename(os.path.normpath(p)), p)
        else:
            raise FileNotFoundError(2, "No such file or directory", p)
    return sorted(out.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))


def _add_name(out, name, path):
    if name in out:
        raise_code("usage.argument", f"two files would become blob {name!r}: {out[name]} and {path}")
    out[name] = path


@click.command("import", context_settings=CONTEXT, help="""\
Store every regular file below DIR as a blob named by its path relative to DIR
('/' separated), replacing blobs of the same name, in one atomic commit.  Other
blobs are left alone.

\b
Examples:
  nvbox import vm.nvbox state/      # state/tpm/permanent -> blob tpm/permanent""")
@image_command(output=True)
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def import_(image, directory, output):
    files = collect_files([directory])
    total = 0
    with image.open("rw") as img:
        with img.transaction():
            for name, path in files:
                data = read_file(path)
                total += len(data)
                img[name] = data
    if output == "json":
        emit_json({"imported": len(files), "bytes": total, "blobs": [n for n, _ in files]})
    else:
        click.echo(f"Imported {len(files)} blob{'s' if len(files) != 1 else ''} ({human_size(total)}).")


def _export_path(directory, name) -> str:
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in name and os.sep == "\\":
        raise_code("usage.argument", f"blob {name!r} cannot be exported as a file path")
    return os.path.join(directory, *parts)


@click.command(context_settings=CONTEXT, help="""\
Write every blob to a file below DIR named by the blob's name ('/' makes
subdirectories): the inverse of import.  DIR is created if needed.  Names that
are not safe relative paths ('..', empty components, a leading '/') are refused
before anything is written.

\b
Examples:
  nvbox export vm.nvbox state/
  nvbox export --snapshot before-upgrade vm.nvbox old-state/""")
@image_command(output=True)
@click.option("--snapshot", metavar="NAME", help="Export snapshot NAME's blobs.")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
def export(image, directory, snapshot, output):
    with image.open("r") as img:
        source = img.snapshots.view(snapshot) if snapshot is not None else img
        names = sorted(source.names())
        paths = {n: _export_path(directory, n) for n in names}
        as_dirs = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
        clash = sorted(set(names) & as_dirs)
        if clash:
            raise_code("usage.argument", f"blob {clash[0]!r} is also a directory of another blob's name")
        total = 0
        os.makedirs(directory, exist_ok=True)
        for n in names:
            data = source[n]
            total += len(data)
            os.makedirs(os.path.dirname(paths[n]), exist_ok=True)
            with open(paths[n], "wb") as f:
                f.write(data)
    if output == "json":
        emit_json({"exported": len(names), "bytes": total, "blobs": names})
    else:
        click.echo(f"Exported {len(names)} blob{'s' if len(names) != 1 else ''} ({human_size(total)}).")



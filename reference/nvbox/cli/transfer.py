"""Commands between an image and a directory of files: import, export.

The work is ``nvbox.transfer``'s; this module parses options and prints."""

from __future__ import annotations

import os

import click

from ..cmdline import CONTEXT, PROGRESS_BYTES, Progress, emit_error, emit_json, human_size, image_command
from ..transfer import DEFAULT_EXCLUDES, collect_files, export_blobs, import_files

__all__ = ["collect_files", "exclude_options", "excludes", "export", "import_"]

_DEFAULTS_TEXT = ", ".join(f"'{p}'" for p in DEFAULT_EXCLUDES)


def exclude_options(what):
    """--exclude and --no-default-excludes; ``what`` says what a match means."""
    def add(fn):
        fn = click.option("--no-default-excludes", is_flag=True,
                          help=f"Do not use the default patterns ({_DEFAULTS_TEXT}).")(fn)
        fn = click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
                          help=f"{what} files whose relative path or base name matches GLOB (repeatable).")(fn)
        return fn
    return add


def excludes(exclude, no_default_excludes) -> tuple:
    return tuple(exclude) + (() if no_default_excludes else DEFAULT_EXCLUDES)


def _plural(n, word):
    return f"{n} {word}{'s' if n != 1 else ''}"


@click.command("import", context_settings=CONTEXT, help=f"""\
Store every regular file below DIR as a blob named by its path relative to DIR
('/' separated), replacing blobs of the same name, in one atomic commit.  Other
blobs are left alone.  A blob whose content equals its file's is not rewritten,
so a re-import writes only what changed (and a snapshot keeps sharing the
rest); with nothing changed there is no commit.

\b
Left out by default (matched against the relative path and the base name):
  {_DEFAULTS_TEXT}
(swtpm's lock file, editor backups, swap and autosave files, export's
temporary files); --exclude adds patterns, --no-default-excludes drops these.

\b
Examples:
  nvbox import vm.nvbox state/      # state/tpm/permanent -> blob tpm/permanent
  nvbox import --exclude '*.log' vm.nvbox /var/lib/swtpm/vm1""")
@image_command(output=True)
@exclude_options("Leave out")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def import_(image, directory, output, exclude, no_default_excludes):
    files = collect_files([directory], excludes(exclude, no_default_excludes))
    with image.open("rw") as img:
        total = sum(os.path.getsize(p) for _, p in files)
        with Progress(total, "importing", large=total >= PROGRESS_BYTES) as progress:
            result = import_files(img, files, progress)
    if output == "json":
        emit_json({"imported": len(files), "written": result.written, "unchanged": result.unchanged,
                   "bytes": result.bytes_total, "bytes_written": result.bytes_written,
                   "blobs": [n for n, _ in files]})
    else:
        click.echo(f"Imported {_plural(len(files), 'blob')} ({human_size(result.bytes_total)}): "
                   f"{len(result.written)} written ({human_size(result.bytes_written)}), "
                   f"{len(result.unchanged)} unchanged.")


def _mode(value) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode such as 600 or 640") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not a permission mode (000 to 777)")
    return mode


@click.command(context_settings=CONTEXT, help="""\
Write every blob to a file below DIR named by the blob's name ('/' makes
subdirectories): the inverse of import.  DIR is created if needed.  Each file is
written crash-safely: a temporary file in the same directory, fsync, rename over
the old file, fsync of the directory; a crash leaves every file with its old or
its new content.  Files get mode 0600 (--mode to change; directories made get
the matching search bits), whatever the umask.

\b
--mirror makes DIR hold exactly the image's (or the snapshot's) blobs: files
that are not blobs are removed, except those the exclude patterns match (the
same defaults as import, so swtpm's .lock stays), and directories left empty go.
Use it to restore a device's state directory, with the device stopped.

\b
A blob that cannot be exported (damaged, a name that is not a safe path, or a
name that is also another blob's directory) is reported and the others are
still written; the exit status is then 1.

\b
Examples:
  nvbox export vm.nvbox state/
  nvbox export --snapshot before-upgrade --mirror vm.nvbox /var/lib/swtpm/vm1
  nvbox export --mode 640 vm.nvbox state/""")
@image_command(output=True)
@click.option("--snapshot", metavar="NAME", help="Export snapshot NAME's blobs.")
@click.option("--mirror", is_flag=True, help="Remove files in DIR that are not blobs (see above).")
@click.option("--mode", "mode", default="600", show_default=True, metavar="OCTAL",
              help="Permission bits of the files written.")
@exclude_options("With --mirror, keep")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
def export(image, directory, snapshot, mirror, mode, output, exclude, no_default_excludes):
    file_mode = _mode(mode)
    with image.open("r") as img:
        source = img.snapshots.view(snapshot) if snapshot is not None else img
        total = sum(e.size for e in source.entries())
        with Progress(total, "exporting", large=total >= PROGRESS_BYTES) as progress:
            result = export_blobs(source, directory, mirror=mirror, mode=file_mode,
                                  exclude=excludes(exclude, no_default_excludes), progress=progress)
    if output == "json":
        emit_json({"exported": len(result.written), "bytes": result.bytes_written, "blobs": result.written,
                   "removed": result.removed, "failed": result.failed})
    else:
        click.echo(f"Exported {_plural(len(result.written), 'blob')} ({human_size(result.bytes_written)})"
                   + (f", removed {_plural(len(result.removed), 'path')}" if mirror else "") + ".")
        for f in result.failed:
            emit_error(f["code"], f"blob {f['name']!r} not exported: {f['message']}", output)
    if result.failed:
        raise click.exceptions.Exit(1)

"""Snapshot commands (the ``snapshot`` group) and ``diff``."""

from __future__ import annotations

import click

from ..snapshots import diff as snapshot_diff
from .common import CONTEXT, emit_json, format_time, human_size, image_command, read_file, table

__all__ = ["diff", "snapshot"]


# -- snapshots -------------------------------------------------------------------------------

@click.group(context_settings=CONTEXT, help="""\
Create, list, revert, delete and rename whole-image snapshots.  Each is one
atomic commit and costs the same at any image size.

\b
Examples:
  nvbox snapshot create vm.nvbox before-upgrade --metadata-file notes.json
  nvbox snapshot list vm.nvbox
  nvbox snapshot revert vm.nvbox before-upgrade
  nvbox snapshot rename vm.nvbox before-upgrade v1
  nvbox snapshot delete vm.nvbox v1""")
def snapshot():
    pass


@snapshot.command("create", context_settings=CONTEXT, help="""\
Snapshot the whole image under NAME, optionally with up to 1024 bytes of
metadata read from FILE.

\b
Example:
  nvbox snapshot create vm.nvbox before-upgrade""")
@image_command()
@click.option("--metadata-file", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Store FILE's bytes (at most 1024) with the snapshot.")
@click.argument("name")
def snapshot_create(image, name, metadata_file):
    metadata = read_file(metadata_file) if metadata_file else None
    with image.open("rw") as img:
        img.snapshots.create(name, metadata=metadata)


@snapshot.command("list", context_settings=CONTEXT, help="""\
List the snapshots, oldest first.

\b
Examples:
  nvbox snapshot list vm.nvbox
  nvbox snapshot list --output json vm.nvbox""")
@image_command(output=True)
def snapshot_list(image, output):
    with image.open("r") as img:
        snaps = img.snapshots.list()
    if output == "json":
        emit_json({"snapshots": [{"id": s.id, "name": s.name, "create_time": s.create_time, "blob_count": s.blob_count,
                              "metadata_hex": None if s.metadata is None else s.metadata.hex()} for s in snaps]})
        return
    if not snaps:
        click.echo("No snapshots.")
        return
    rows = [[s.id, s.name, s.blob_count, format_time(s.create_time),
             "-" if s.metadata is None else human_size(len(s.metadata))] for s in snaps]
    for line in table(rows, ["ID", "NAME", "BLOBS", "DATE", "METADATA"]):
        click.echo(line)


@snapshot.command("revert", context_settings=CONTEXT, help="""\
Make the active state equal snapshot NAME (the snapshot stays).

\b
Example:
  nvbox snapshot revert vm.nvbox before-upgrade""")
@image_command()
@click.argument("name")
def snapshot_revert(image, name):
    with image.open("rw") as img:
        img.snapshots.revert(name)


@snapshot.command("delete", context_settings=CONTEXT, help="""\
Delete snapshot NAME, freeing what only it held.

\b
Example:
  nvbox snapshot delete vm.nvbox before-upgrade""")
@image_command()
@click.argument("name")
def snapshot_delete(image, name):
    with image.open("rw") as img:
        img.snapshots.delete(name)


@snapshot.command("rename", context_settings=CONTEXT, help="""\
Rename snapshot NAME to NEW.

\b
Example:
  nvbox snapshot rename vm.nvbox before-upgrade v1.0""")
@image_command()
@click.argument("name")
@click.argument("new")
def snapshot_rename(image, name, new):
    with image.open("rw") as img:
        img.snapshots.rename(name, new)


# -- diff -----------------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, help="""\
Blobs added, removed and changed from snapshot A to snapshot B, or to the active
state when B is not given.  Human output: '+ name' added, '- name' removed,
'M name' changed.  Shared subtrees are skipped unread, so the cost follows the
difference.

\b
Examples:
  nvbox diff vm.nvbox before-upgrade
  nvbox diff --output json vm.nvbox before-upgrade after-upgrade""")
@image_command(output=True)
@click.argument("a")
@click.argument("b", required=False)
def diff(image, a, b, output):

    with image.open("r") as img:
        result = snapshot_diff(img, a, b)
    if output == "json":
        emit_json({"a": a, "b": b, **result})
        return
    lines = ([("+", n) for n in result["added"]] + [("-", n) for n in result["removed"]]
             + [("M", n) for n in result["changed"]])
    for mark, n in sorted(lines, key=lambda x: x[1]):
        click.echo(f"{mark} {n}")
    if not lines:
        click.echo("No differences.")



"""Snapshot commands (the ``snapshot`` group) and ``diff``."""

from __future__ import annotations

import click

from ..cmdline import CONTEXT, emit_json, format_time, human_size, image_command, read_file, table
from ..compare import compare
from ..live.control import snapshot_op as live_or_local   # a mounted or served image: its live session

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
    live_or_local(lambda: image.open("rw"), image.path, "create", name=name, metadata=metadata)


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
    live_or_local(lambda: image.open("rw"), image.path, "revert", name=name)


@snapshot.command("delete", context_settings=CONTEXT, help="""\
Delete snapshot NAME, freeing what only it held.

\b
Example:
  nvbox snapshot delete vm.nvbox before-upgrade""")
@image_command()
@click.argument("name")
def snapshot_delete(image, name):
    live_or_local(lambda: image.open("rw"), image.path, "delete", name=name)


@snapshot.command("rename", context_settings=CONTEXT, help="""\
Rename snapshot NAME to NEW.

\b
Example:
  nvbox snapshot rename vm.nvbox before-upgrade v1.0""")
@image_command()
@click.argument("name")
@click.argument("new")
def snapshot_rename(image, name, new):
    live_or_local(lambda: image.open("rw"), image.path, "rename", old=name, new=new)


# -- diff -----------------------------------------------------------------------------------

EXIT_SAME, EXIT_DIFFERENT, EXIT_DIFF_FAILED = 0, 1, 2     # as qemu-img compare


@click.command(context_settings=CONTEXT, help="""\
Blobs added, removed and changed (in content: size or bytes) from snapshot A to
snapshot B, or to the active state when B is not given.  Human output: '+ name'
added, '- name' removed, 'M name' changed; with --storage also 'S name' for a
blob whose content is equal but whose storage differs (re-written with the same
bytes).  What the two states share is skipped unread; of a blob stored
differently only the clusters whose pointers differ are compared, by checksum
where that decides (a plain image) and by reading them otherwise.

\b
Exit status, as qemu-img compare: 0 the states are equal (with --storage: also
in storage), 1 they differ, 2 the comparison could not be made.

\b
Examples:
  nvbox diff vm.nvbox before-upgrade
  nvbox diff --output json vm.nvbox before-upgrade after-upgrade
  nvbox diff vm.nvbox before-upgrade && echo unchanged""")
@image_command(output=True, exit_for=lambda kind: EXIT_DIFF_FAILED)
@click.option("--storage", is_flag=True, help="Also report (and count as a difference) blobs stored differently "
                                              "with equal content.")
@click.argument("a")
@click.argument("b", required=False)
def diff(image, a, b, storage, output):
    with image.open("r") as img:
        result = compare(img, a, b)
    different = not result["equal"] or (storage and bool(result["rewritten"]))
    if output == "json":
        emit_json({"a": a, "b": b, **result})
    else:
        marks = ([("+", n) for n in result["added"]] + [("-", n) for n in result["removed"]]
                 + [("M", n) for n in result["changed"]] + ([("S", n) for n in result["rewritten"]] if storage else []))
        for mark, n in sorted(marks, key=lambda x: x[1].encode("utf-8")):
            click.echo(f"{mark} {n}")
        if not marks:
            click.echo("No differences.")
    raise click.exceptions.Exit(EXIT_DIFFERENT if different else EXIT_SAME)

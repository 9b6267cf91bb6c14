"""Key slot commands (the ``key`` group)."""

from __future__ import annotations

import click

from ..cmdline import CONTEXT, emit_json, image_command, load_key
from ..errors import raise_code

__all__ = ["key"]


# -- key --------------------------------------------------------------------------------------

@click.group(context_settings=CONTEXT, help="""\
Manage the key slots of an encrypted image (8 slots; each wraps the image's
master key under a passphrase or a key file).  Unlock with the usual options
(--key-file, --passphrase-file or NVBOX_PASSPHRASE); name the new key with
--new-key-file or --new-passphrase-file.  Secrets are never taken on the
command line.

\b
Examples:
  nvbox key list --key-file old.key vm.nvbox
  nvbox key add --key-file old.key --new-passphrase-file pass.txt vm.nvbox
  nvbox key remove --passphrase-file pass.txt vm.nvbox 0""")
def key():
    pass


def _new_key(new_key_file, new_passphrase_file):
    if bool(new_key_file) == bool(new_passphrase_file):
        raise_code("usage.argument", "give exactly one of --new-key-file and --new-passphrase-file")
    return load_key(new_key_file, new_passphrase_file, environ={})


@key.command("list", context_settings=CONTEXT, help="""\
The key slots in use: index, kind and KDF settings (never secrets).

\b
Examples:
  nvbox key list --key-file vm.key vm.nvbox
  nvbox key list --output json --passphrase-file pass.txt vm.nvbox""")
@image_command(output=True)
def key_list(image, output):
    with image.open("r") as img:
        slots = img.key_slots.list()
    if output == "json":
        emit_json({"slots": slots})
        return
    for s in slots:
        extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("index", "kind"))
        click.echo(f"slot {s['index']}: {s['kind']}" + (f" ({extra})" if extra else ""))


@key.command("add", context_settings=CONTEXT, help="""\
Add a key slot for a new passphrase or key file (one commit).

\b
Examples:
  nvbox key add --key-file vm.key --new-passphrase-file pass.txt vm.nvbox
  nvbox key add --passphrase-file pass.txt --new-key-file backup.key vm.nvbox""")
@image_command(output=True)
@click.option("--new-key-file", type=click.Path(dir_okay=False), metavar="FILE", help="The new key file.")
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A file holding the new passphrase.")
def key_add(image, output, new_key_file, new_passphrase_file):
    new = _new_key(new_key_file, new_passphrase_file)
    with image.open("rw") as img:
        index = img.key_slots.add(new)
    if output == "json":
        emit_json({"added": index})
    else:
        click.echo(f"Added key slot {index}.")


@key.command("remove", context_settings=CONTEXT, help="""\
Remove key slot SLOT (refused for the last one; see 'nvbox key list').

\b
Examples:
  nvbox key remove --passphrase-file pass.txt vm.nvbox 0""")
@image_command(output=True)
@click.argument("slot", type=int)
def key_remove(image, slot, output):
    with image.open("rw") as img:
        img.key_slots.remove(slot)
    if output == "json":
        emit_json({"removed": slot})
    else:
        click.echo(f"Removed key slot {slot}.")



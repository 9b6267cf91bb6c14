"""The ``nvbox`` command, in the style of qemu-img.

Every subcommand opens the image, does one thing, and closes it.  The commands
live in one module per group (``blobs``, ``snapshot``, ``keys``,
``maintenance``, ``transfer``, ``dump``, ``measure``); what they share (errors,
key options, output formats, the ``image_command`` decorator) is in
``common``.  This module makes the group and registers them.
"""

from __future__ import annotations

import click

import nvbox

from .blobs import create, get, info, ls, put, rm
from .common import CONTEXT, human_size, load_key
from .dump import dump, dump_image
from .keys import key
from .maintenance import check, compact, map_command
from .measure import measure, measure_paths
from .snapshot import diff, snapshot
from .transfer import collect_files, export, import_

__all__ = ["cli", "collect_files", "dump_image", "human_size", "load_key", "main", "measure_paths"]


@click.group(context_settings=CONTEXT, help="""\
Create, inspect, check and change nvbox images: containers of named device-state
blobs (TPM state, NIC EEPROM, VPD, UEFI variables) with snapshots, checksums and
atomic commits.

\b
Examples:
  nvbox create vm.nvbox
  nvbox put vm.nvbox tpm/permanent tpm2-00.permall
  echo -n eeprom | nvbox put vm.nvbox nic0/eeprom -
  nvbox ls -l vm.nvbox
  nvbox snapshot create vm.nvbox before-upgrade
  nvbox check vm.nvbox            # exit 0 clean, 2 corrupt, 3 leaks
  nvbox info --output json vm.nvbox

Errors print one line, 'nvbox: error: <code>: <message>', and exit 1 (check uses
the qemu-img check exit codes).  Keys are never given on the command line: use
--key-file FILE, --passphrase-file FILE or the NVBOX_PASSPHRASE variable.""")
@click.version_option(nvbox.__version__, "--version", prog_name="nvbox")
def cli():
    pass


for _command in (create, put, get, rm, ls, info, check, compact, map_command, import_, export, diff, snapshot,
                 key, dump, measure):
    cli.add_command(_command)

# -- commands of other packages ---------------------------------------------------------------
# Each adds one line here: cli.add_command(<click command>), imported from its package
# (the live servers in nvbox.live: mount/umount, serve).


def main(argv=None) -> None:
    """Console entry point (``nvbox``)."""
    cli.main(args=argv, prog_name="nvbox")

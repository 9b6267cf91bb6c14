"""The ``nvbox`` command, in the style of qemu-img.

Every subcommand opens the image, does one thing, and closes it.  The commands
live in one module per group (``blobs``, ``snapshot``, ``keys``,
``maintenance``, ``transfer``, ``dump``, ``measure``); what they share with
each other and with the live servers' commands (errors, key options, output
formats, the ``image_command`` decorator) is ``nvbox.cmdline``.  This module
makes the group and registers them.
"""

from __future__ import annotations

import sys

import click

import nvbox

from ..cmdline import CONTEXT, emit_error, human_size, load_key
from ..live.commands import mount, umount
from ..live.serve import serve
from .blobs import create, get, info, ls, put, rm
from .dump import dump, dump_image
from .keys import key
from .maintenance import check, compact, map_command
from .measure import measure, measure_paths
from .snapshot import diff, snapshot
from .transfer import collect_files, export, import_

__all__ = ["cli", "collect_files", "dump_image", "human_size", "load_key", "main", "measure_paths"]


def _wants_json(args) -> bool:
    """Whether the command line asks for --output json (usage errors are found
    before the command's options are parsed)."""
    args = list(args)
    return any(a == "--output=json" or (a == "--output" and args[i + 1:i + 2] == ["json"])
               for i, a in enumerate(args))


class _Command(click.Group):
    """The group, reporting usage errors as every other error: one line
    ``nvbox: error: usage.argument: ...`` (or the JSON document) and exit 1,
    as qemu-img does, instead of click's usage text and exit 2 (which ``check``
    uses for corruption)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = sys.argv[1:] if args is None else list(args)
        try:
            status = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help(), err=True)        # bare 'nvbox': the help, as a usage error
            status = 1
        except click.ClickException as exc:
            message = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message = f"{exc.ctx.command_path}: {message} (see '{exc.ctx.command_path} --help')"
            emit_error("usage.argument", message, "json" if _wants_json(argv) else "human")
            status = 1
        except click.exceptions.Abort:
            emit_error("interrupted", "interrupted", "json" if _wants_json(argv) else "human")
            status = 130
        status = status if isinstance(status, int) else 0
        if standalone_mode:
            sys.exit(status)
        return status


@click.group(cls=_Command, context_settings=CONTEXT, help="""\
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

Errors, usage errors included, print one line 'nvbox: error: <code>: <message>'
(with --output json the document {"error": {"code", "message"}} on stdout) and
exit 1; check uses the qemu-img check exit codes (0 clean, 2 corrupt, 3 leaks,
1 could not check, 63 unsupported features) and diff exits 1 when the states
differ.  -o FILE always names an output file; --output is always the format.  Keys are never given on the command line: use
--key-file FILE, --passphrase-file FILE or the NVBOX_PASSPHRASE variable.""")
@click.version_option(nvbox.__version__, "--version", prog_name="nvbox")
def cli():
    pass


for _command in (create, put, get, rm, ls, info, check, compact, map_command, import_, export, diff, snapshot,
                 key, dump, measure):
    cli.add_command(_command)

# -- commands of other packages ---------------------------------------------------------------
# Each adds its click commands here, imported at the top (the live servers in nvbox.live:
# mount/umount, serve).  They take their options and error guard from nvbox.cmdline,
# outside this package, so importing them does not import this module.
cli.add_command(mount)
cli.add_command(umount)
cli.add_command(serve)


def main(argv=None) -> None:
    """Console entry point (``nvbox``)."""
    cli.main(args=argv, prog_name="nvbox")

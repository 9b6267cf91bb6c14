"""``measure``: the capacity a fixed image needs for a set of files."""

from __future__ import annotations

import click

from ..cmdline import CONTEXT, emit_json, guard, output_option, read_file
from ..measure import measure as measure_blobs
from .transfer import collect_files

__all__ = ["measure", "measure_paths"]


def measure_paths(paths, cluster_size=4096, encrypt=False) -> dict:
    """The capacities a fixed image needs for the files (see ``nvbox measure --help``)."""
    return measure_blobs([(name, read_file(path)) for name, path in collect_files(paths)], cluster_size, encrypt)


@click.command(context_settings=CONTEXT, help="""\
Print the capacity in bytes (for create --capacity) that a fixed image needs to
hold FILEs and the files below DIRs (named as import names them), and to save
them once more.

\b
It is computed exactly, not estimated: the image is built in memory with the same
code that writes files.
  MINIMUM  = image_clusters x cluster_size after the files are imported, in one
             commit, into a fresh image.  With one cluster less that import
             fails with space.exhausted.
  REQUIRED = MINIMUM plus the headroom one more commit needs: the peak
             image_clusters x cluster_size after a second commit that rewrites
             every blob (the next save of the whole state).  Copy-on-write never
             reuses a cluster the last commit still refers to (R-cow-1,
             R-alloc-2), so that commit needs room for a new copy of everything it
             replaces, plus new directory and refcount nodes, before the old
             copies are freed.  With REQUIRED the files fit and can be saved once
             more; with one cluster less the second save fails.
REQUIRED is printed; --output json gives both, in bytes and clusters.

\b
Examples:
  nvbox measure state/
  nvbox create --capacity "$(nvbox measure state/)" fixed.nvbox
  nvbox measure --cluster-size 512 --output json tpm.bin eeprom.bin""")
@output_option
@click.option("--cluster-size", default="4096", show_default=True, metavar="N", help="Cluster size of the image.")
@click.option("--encrypt", is_flag=True, help="Measure an encrypted layout (40-byte pointers, key slot table).")
@click.argument("paths", metavar="FILE|DIR...", nargs=-1, required=True, type=click.Path(exists=True))
@guard()
def measure(paths, cluster_size, encrypt, output):
    doc = measure_paths(paths, cluster_size, encrypt)
    if output == "json":
        emit_json(doc)
    else:
        click.echo(str(doc["required"]))



"""``dump``: every on-disk structure of an image with its byte offset (the
decoding is the library's: ``nvbox.dump``)."""

from __future__ import annotations

import click

from ..cmdline import CONTEXT, emit_json, image_command
from ..dump import dump_image, render_dump

__all__ = ["dump", "dump_image"]


@click.command(context_settings=CONTEXT, help="""\
Show every structure with its byte offset: the header and its extensions, both
commit slots (valid or not, with their generation), the refcount tree's nodes,
the directory's nodes and entries, every cluster map, the snapshot table's
records, and the key slot table.  The header area is decoded without validation,
so a damaged image still shows it; problems are listed at the end.

\b
--output json gives one tree.  Every structure is an object with "type",
"offset" (absolute byte offset in the file), "length" and "fields", whose keys
are exactly the field names of the spec's tables (and of the ASN.1 module for
DER records: name, size, content, lowKey, child, id, createTime, blobCount,
dirDepth, dirRoot, metadata).  Byte strings are lowercase hex, pointers are
objects {offset, crc, reserved} or {offset, crc, nonce, tag}, reserved byte ranges
are {length, all_zero}.  Derived values go in "decoded".  In an encrypted image
the offsets of DER records are positions in the decrypted cluster.

\b
Examples:
  nvbox dump vm.nvbox
  nvbox dump --output json vm.nvbox | jq '.slots[] | {name, valid, generation}'""")
@image_command(output=True, exists=True)
def dump(image, output):
    doc = dump_image(image.path, image.key())
    if output == "json":
        emit_json(doc)
    else:
        for line in render_dump(doc):
            click.echo(line)
        if "error" in doc:
            click.echo(f"nvbox: error: {doc['error']['code']}: {doc['error']['message']}", err=True)
    if "error" in doc:
        raise click.exceptions.Exit(1)



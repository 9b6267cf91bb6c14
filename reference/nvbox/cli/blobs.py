"""Commands on blobs and the image as a whole: create, put, get, rm, ls, info."""

from __future__ import annotations

import sys

import click

import nvbox

from .. import _format as fmt
from ..check import damaged_slots
from ..cmdline import CONTEXT, emit_json, format_time, human_size, image_command, table
from ..errors import NvboxError, raise_code
from ..probe import NEEDS_KEY, probe

__all__ = ["create", "get", "info", "ls", "put", "rm"]


# -- create --------------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, help="""\
Create a new image.  Growable unless --capacity gives a fixed size (bytes, or with
a K/M/G/T suffix; 'device' uses the current size of an existing file or block
device, with --overwrite).  An encrypted image needs a key (--key-file,
--passphrase-file or NVBOX_PASSPHRASE).

\b
Examples:
  nvbox create vm.nvbox
  nvbox create --cluster-size 512 small.nvbox
  nvbox create --capacity "$(nvbox measure state/)" fixed.nvbox
  nvbox create --capacity device --overwrite /dev/vdb
  NVBOX_PASSPHRASE=... nvbox create --encrypt secret.nvbox""")
@image_command()
@click.option("--cluster-size", default="4096", show_default=True, metavar="N",
              help="Cluster size: a power of two from 512 to 2M (suffixes K, M allowed).")
@click.option("--capacity", metavar="SIZE", default=None, help="Fixed capacity in bytes (e.g. 64M), or 'device'.")
@click.option("--encrypt", is_flag=True, help="Encrypt and authenticate every cluster (AES-256-GCM).")
@click.option("--overwrite", is_flag=True, help="Reuse an existing file or block device.")
def create(image, cluster_size, capacity, encrypt, overwrite):
    key = image.key()
    if encrypt and key is None:
        raise_code("key.missing", "an encrypted image needs --key-file, --passphrase-file or NVBOX_PASSPHRASE")
    with nvbox.create(image.path, cluster_size=cluster_size, capacity=capacity, encrypt=encrypt, key=key,
                      overwrite=overwrite) as img:
        info = img.info()
    cap = f"{info['capacity']}" if info["capacity"] else "growable"
    click.echo(f"Formatting '{image}', fmt=nvbox cluster_size={info['cluster_size']} capacity={cap} "
               f"encryption={'on' if info['encrypted'] else 'off'}")


# -- put / get / rm ------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, help="""\
Store FILE (or stdin, with '-' or no FILE) as blob TAG, replacing any old contents,
in one atomic commit.

\b
Examples:
  nvbox put vm.nvbox tpm/permanent tpm2-00.permall
  echo -n 'eeprom' | nvbox put vm.nvbox nic0/eeprom -""")
@image_command()
@click.argument("tag")
@click.argument("file", required=False, default="-")
def put(image, tag, file):
    if file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(file, "rb") as f:
            data = f.read()
    with image.open("rw") as img:
        img[tag] = data


@click.command(context_settings=CONTEXT, help="""\
Write blob TAG to stdout, or to FILE with -o.  With --snapshot, read the blob as
it was in that snapshot.

\b
Examples:
  nvbox get vm.nvbox tpm/permanent -o permall.bin
  nvbox get vm.nvbox tpm/permanent --snapshot before-upgrade -o old.bin
  nvbox get vm.nvbox nic0/eeprom | xxd""")
@image_command()
@click.option("-o", "--output-file", "output_file", metavar="FILE", help="Write to FILE instead of stdout.")
@click.option("--snapshot", metavar="NAME", help="Read from snapshot NAME.")
@click.argument("tag")
def get(image, tag, output_file, snapshot):
    with image.open("r") as img:
        data = img.snapshots.view(snapshot)[tag] if snapshot is not None else img[tag]
    if output_file and output_file != "-":
        with open(output_file, "wb") as f:
            f.write(data)
    else:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()


@click.command(context_settings=CONTEXT, help="""\
Delete blob TAG (several tags are deleted together, in one commit).

\b
Examples:
  nvbox rm vm.nvbox nic0/eeprom
  nvbox rm vm.nvbox old/a old/b""")
@image_command()
@click.argument("tags", metavar="TAG...", nargs=-1, required=True)
def rm(image, tags):
    with image.open("rw") as img:
        with img.transaction():
            for tag in tags:
                del img[tag]


# -- ls / info ------------------------------------------------------------------------------

def _entries(img, snapshot):
    entries = img.entries() if snapshot is None else img.snapshots.view(snapshot).entries()
    return sorted(entries, key=lambda e: e.name.encode("utf-8"))


@click.command(context_settings=CONTEXT, help="""\
List the blobs (of the active state, or of snapshot NAME).  -l adds the size and
how each blob is stored: inline in its directory entry, or in clusters through a
cluster map of the given depth.  Sizes are rounded (5.9 KiB) unless --bytes is
given; --output json always gives exact byte counts.

\b
Examples:
  nvbox ls vm.nvbox
  nvbox ls -l --bytes vm.nvbox --snapshot before-upgrade
  nvbox ls --output json vm.nvbox""")
@image_command(output=True)
@click.option("-l", "long", is_flag=True, help="Long listing: size and storage.")
@click.option("--bytes", "exact", is_flag=True, help="With -l, sizes in exact bytes.")
@click.option("--snapshot", metavar="NAME", help="List snapshot NAME's blobs.")
def ls(image, long, exact, snapshot, output):
    with image.open("r") as img:
        entries = _entries(img, snapshot)
    if output == "json":
        emit_json({"snapshot": snapshot, "blobs": [{"name": e.name, "size": e.size, "inline": e.inline,
                                                "depth": e.depth} for e in entries]})
        return
    if not long:
        for e in entries:
            click.echo(e.name)
        return
    size = (lambda n: n) if exact else human_size
    rows = [[size(e.size), "inline" if e.inline else f"clusters, depth {e.depth}", e.name] for e in entries]
    if rows:
        for line in table(rows, ["SIZE", "STORAGE", "NAME"]):
            click.echo(line)
    total = sum(e.size for e in entries)
    click.echo(f"{len(entries)} blob{'s' if len(entries) != 1 else ''}, {size(total)}{' bytes' if exact else ''}")


@click.command(context_settings=CONTEXT, help="""\
Show what the image is: format, cluster size, capacity, size, generation, blob and
snapshot counts, encryption and key slots, feature bits, creator.  An encrypted
image without a key still shows what its plaintext header and commit slots say
(unauthenticated), and lists what needs the key.  The generation can be kept
outside the image to detect a rollback of the whole file (spec 10.3).

\b
Examples:
  nvbox info vm.nvbox
  nvbox info --output json vm.nvbox""")
@image_command(output=True)
def info(image, output):
    try:
        with image.open("r") as img:
            doc = img.info()
            doc["file_size"] = img.dev.size()
            doc["damaged_slots"] = damaged_slots(img)   # R-check-3: a commit that may be lost
            if doc["encrypted"]:
                doc["key_slots"] = [s["kind"] for s in img.key_slots.list()]
    except NvboxError as exc:
        if exc.code == "key.missing":
            # Locked: what the plaintext header and slots say, as qemu-img info shows a
            # LUKS image's geometry without its secret.
            doc = probe(image.path)
            doc["needs_key"] = list(NEEDS_KEY)
        elif exc.kind == "corrupt":
            # Damage past the header and slots (a tree): show what they say, and the
            # damage, as qemu-img info shows "corrupt: true".
            try:
                doc = probe(image.path)
            except NvboxError:
                raise exc from None
            doc["corrupt"] = exc.to_json()
        else:
            raise
    if output == "json":
        emit_json(doc)
        return
    cs = doc["cluster_size"]
    cap = ("growable" if doc["capacity"] is None
           else f"{human_size(doc['capacity'])} ({doc['capacity'] // cs} clusters, fixed)")
    creator = next((bytes.fromhex(e["data_hex"]).decode("utf-8", "replace")
                    for e in doc["extensions"] if e["type"] == fmt.EXT_CREATOR), None)
    lines = [
        ("image", image.path),
        ("file format", f"nvbox (version {doc['version']})"),
        ("cluster size", f"{human_size(cs)} ({cs} bytes)"),
        ("capacity", cap),
        ("image size", f"{human_size(doc['image_size'])} ({doc['image_clusters']} clusters)"),
        ("disk size", human_size(doc["file_size"])),
        ("used", f"{human_size(doc['used_clusters'] * cs)} ({doc['used_clusters']} clusters, "
                 f"{doc['free_clusters']} free)" if "used_clusters" in doc
                 else "- (needs the key)" if "needs_key" in doc else "- (the refcount tree cannot be read)"),
        ("blobs", str(doc["blob_count"])),
        ("snapshots", str(doc["snapshot_count"])),
        ("encrypted", "yes (AES-256-GCM)" if doc["encrypted"] else "no"),
        ("generation", str(doc["generation"])),
        ("uuid", doc["image_uuid"]),
        ("created", format_time(doc["create_time"])),
        ("last commit", format_time(doc["commit_time"])),
        ("features", f"incompatible 0x{doc['incompatible_features']:x}, compatible "
                     f"0x{doc['compatible_features']:x}, autoclear 0x{doc['autoclear_features']:x}"),
        ("tree depths", f"directory {doc['dir_depth']}, refcount {doc['refcount_depth']}"),
    ]
    if doc.get("key_slots") is not None:
        lines.append(("key slots", f"{len(doc['key_slots'])} in use ({', '.join(doc['key_slots'])})"))
    if "corrupt" in doc:
        lines.append(("corrupt", f"yes: {doc['corrupt']['code']}: {doc['corrupt']['message']} (run nvbox check)"))
    if "needs_key" in doc:
        lines.append(("locked", "no key given; the values above are unauthenticated.  Needs the key: "
                                + ", ".join(doc["needs_key"])))
    for d in doc.get("damaged_slots") or []:
        lines.append(("damaged slot", d["message"]))
    if creator is not None:
        lines.append(("creator", creator))
    others = [e for e in doc["extensions"] if e["type"] != fmt.EXT_CREATOR]
    for e in others:
        lines.append(("extension", f"type {e['type']}{' (required)' if e['required'] else ''} {e['data_hex']}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{(k + ':').ljust(width + 1)} {v}")


"""Commands that examine or rewrite an image's structure: check, compact, map."""

from __future__ import annotations

import click

from .. import _format as fmt
from ..check import check_image, repair_image
from ..clustermap import cluster_map
from ..cmdline import (CONTEXT, EXIT_CORRUPT, EXIT_FAILED, EXIT_UNSUPPORTED, PROGRESS_CLUSTERS, Progress, emit_error,
                     emit_json, human_size, image_command, table)
from ..compact import PROGRESS_SCALE, compact_image
from ..errors import NvboxError
from ..mappicture import render_png
from ..probe import signature

__all__ = ["check", "compact", "map_command"]


# -- check ----------------------------------------------------------------------------------

def _check_exit(kind: str) -> int:
    return {"corrupt": EXIT_CORRUPT, "unsupported": EXIT_UNSUPPORTED}.get(kind, EXIT_FAILED)


def _print_check(doc) -> None:
    for c in doc["corruptions"]:
        where = f" (offset 0x{c['offset']:x})" if "offset" in c else ""
        click.echo(f"ERROR {c['code']}: {c['message']}{where}")
    for e in doc["refcount_errors"]:
        click.echo(f"ERROR cluster {e['cluster']} refcount={e['count']} reference={e['expected']}")
    for e in doc["leaks"]:
        click.echo(f"Leaked cluster {e['cluster']} refcount={e['count']} reference={e['expected']}")
    for r in doc.get("repaired") or []:
        click.echo(f"Repaired cluster {r['cluster']} refcount {r['from']} -> {r['to']}")
    if doc.get("repaired"):
        click.echo(f"The following inconsistencies were found and repaired: {len(doc['repaired'])} "
                   f"refcount{'s' if len(doc['repaired']) != 1 else ''}.")
    if doc.get("repair_refused"):
        click.echo(f"Not repaired: {doc['repair_refused']}")
    errors = len(doc["corruptions"]) + len(doc["refcount_errors"])
    if errors:
        click.echo(f"\n{errors} errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.")
    if doc["leaks"]:
        n = len(doc["leaks"])
        click.echo(f"\n{n} leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.")
    if not errors and not doc["leaks"]:
        click.echo("No errors were found on the image.")
    click.echo(f"{doc['clusters_checked']}/{doc['image_clusters']} clusters reachable and checked.")


@click.command(context_settings=CONTEXT, help="""\
Verify every structure and reference count (spec section 13).  Exit status, as
qemu-img check: 0 clean, 2 corruption (also when the image cannot even be opened
because it is damaged), 3 leaked clusters only, 1 the check could not complete
(no key, I/O error, locked...), 63 the image needs features this implementation
lacks.

-r leaks rewrites the refcount tree to drop leaked clusters; -r all also raises
counts that are too low.  Repair changes nothing when any other corruption is
present; the exit status then describes the image after the repair.

\b
Examples:
  nvbox check vm.nvbox
  nvbox check -r leaks vm.nvbox
  nvbox check --output json vm.nvbox""")
@image_command(output=True, exit_for=_check_exit)
@click.option("-r", "--repair", type=click.Choice(["leaks", "all"]), default=None, help="Repair leaks, or all counts.")
def check(image, repair, output):
    try:
        img = image.open("rw" if repair else "r")
    except NvboxError as exc:
        if exc.kind not in ("corrupt", "unsupported"):
            raise
        if exc.code == "header.magic" and not _has_signature(image.path):
            # Not a damaged nvbox image but some other file: qemu-img's "format does
            # not support checks", the check could not be done.
            emit_error(exc.code, f"{image.path} is not an nvbox image (no nvbox signature in its header or commit "
                                 "slots): nothing to check", output)
            raise click.exceptions.Exit(EXIT_FAILED)
        code = _check_exit(exc.kind)
        if output == "json":
            emit_json({"verdict": "corrupt" if exc.kind == "corrupt" else "unsupported", "opened": False,
                       "error": exc.to_json(),
                       "corruptions": [exc.to_json()] if exc.kind == "corrupt" else [],
                       "refcount_errors": [], "leaks": [], "leaked_clusters": 0, "clusters_checked": 0,
                       "image_clusters": None, "repaired": [], "exit_code": code})
        else:
            click.echo(f"nvbox: error: {exc.code}: {exc.message}", err=True)
            if exc.kind == "corrupt":
                click.echo("The image cannot be opened: it is corrupt.")
        raise click.exceptions.Exit(code)
    with img:
        result = _checked(img, "checking")
        doc_before = result.to_json()
        refused = None
        repaired = []
        if repair and not result.corruptions:
            with _progress(img, "repairing") as progress:
                repaired = repair_image(img, repair, progress).repaired
            if repaired:
                result = _checked(img, "checking again")
        elif repair:
            refused = "structural corruption: a repair would risk data, nothing was changed"
    doc = result.to_json()
    doc["repaired"] = repaired
    doc["exit_code"] = result.exit_code
    doc["opened"] = True
    if repair:
        doc["verdict_before_repair"] = doc_before["verdict"]
        if refused:
            doc["repair_refused"] = refused
    if output == "json":
        emit_json(doc)
    else:
        _print_check(doc)
    raise click.exceptions.Exit(result.exit_code)


def _has_signature(path) -> bool:
    try:
        with open(path, "rb") as f:
            return signature(f.read(fmt.HEADER_AREA))
    except OSError:
        return False


def _progress(img, label) -> Progress:
    """A bar over the clusters a walk visits: the used ones (check reports
    against every cluster of the image, most of them free in a sparse image)."""
    try:
        used = img.info()["used_clusters"]
    except NvboxError:          # a damaged refcount tree: check reports it; the bar just fills at the end
        used = img.slot.image_clusters
    return Progress(used, label, large=used >= PROGRESS_CLUSTERS)


def _checked(img, label):
    with _progress(img, label) as progress:
        return check_image(img, progress)


# -- compact ---------------------------------------------------------------------------------

@click.command(context_settings=CONTEXT, help="""\
Move live clusters toward the start of the image and give the tail back to the
file system, in crash-safe passes (each an ordinary commit).  The image must be
clean: run 'nvbox check -r all' first if it is not.

\b
Examples:
  nvbox compact vm.nvbox
  nvbox compact --output json vm.nvbox""")
@image_command(output=True)
def compact(image, output):
    with image.open("rw") as img:
        # compact reports on its own scale: its check, then each pass's walk.
        with Progress(PROGRESS_SCALE, "compacting", large=img.slot.image_clusters >= PROGRESS_CLUSTERS) as bar:
            result = compact_image(img, lambda done, total: bar(done))
    if output == "json":
        emit_json(result)
    else:
        click.echo(f"Compacted {image}: {human_size(result['before'])} -> {human_size(result['after'])} "
                   f"({result['passes']} pass{'es' if result['passes'] != 1 else ''}, "
                   f"{result['moved']} cluster{'s' if result['moved'] != 1 else ''} moved)")


# -- map ------------------------------------------------------------------------------------

@click.command("map", context_settings=CONTEXT, help="""\
What holds each cluster of the image: header area, refcount tree, directory,
snapshot table, key slots, each blob, clusters only snapshots hold, and free
space.  Without -o it prints an extent table, one line per run of clusters with
the same owner, like qemu-img map: START and LENGTH in bytes, the cluster range,
and WHAT holds it ('shared' when a snapshot holds it too); --output json gives
the runs as JSON.

\b
With -o FILE it draws a PNG grid instead, one cell per cluster, coloured by
owner (shared cells striped), with a legend.  The picture needs matplotlib:
pip install 'nvbox[map]'.

\b
-o means the output file in every command (get, map); --output is always the
format of what is printed.

\b
Examples:
  nvbox map vm.nvbox
  nvbox map --output json vm.nvbox
  nvbox map -o map.png vm.nvbox""")
@image_command(output=True)
@click.option("-o", "--output-file", "output_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a PNG picture to FILE.")
@click.option("--columns", type=click.IntRange(1, 4096), default=None,
              help="Clusters per row in the picture (default: a square grid, 64 to 512).")
def map_command(image, output_file, columns, output):
    with image.open("r") as img:
        with _progress(img, "mapping") as progress:
            description = cluster_map(img, progress)
    cs = description["cluster_size"]
    if output_file:
        grid = render_png(description, output_file, columns)
        if output == "json":
            emit_json({"picture": output_file, **grid, "image_clusters": description["image_clusters"]})
        else:
            click.echo(f"Picture of {description['image_clusters']} clusters written to {output_file} "
                       f"({grid['columns']} per row).")
        return
    if output == "json":
        for r in description["runs"]:
            r["offset"], r["bytes"] = r["start"] * cs, r["length"] * cs
        emit_json(description)
        return
    rows = []
    for r in description["runs"]:
        what = r["category"] if r["owner"] is None else f"{r['category']} {r['owner']}"
        rows.append([f"0x{r['start'] * cs:x}", r["length"] * cs,
                     f"{r['start']}-{r['start'] + r['length'] - 1}", what + (" (shared)" if r["shared"] else "")])
    for line in table(rows, ["START", "LENGTH", "CLUSTERS", "WHAT"]):
        click.echo(line)
    totals = description["totals"]
    click.echo(f"{description['image_clusters']} clusters of {human_size(cs)}: "
               + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
               + f"; {description['shared_clusters']} shared, {description['fragments']} blob extents")

"""Commands that examine or rewrite an image's structure: check, compact, map."""

from __future__ import annotations

import click

from ..check import check_image, repair_image
from ..clustermap import cluster_map, render_png
from ..compact import compact_image
from ..errors import NvboxError
from .common import (CONTEXT, EXIT_CORRUPT, EXIT_FAILED, EXIT_UNSUPPORTED, Progress, emit_json, human_size,
                     image_command)

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
        progress = Progress(img.slot.image_clusters, "checking")
        try:
            result = check_image(img, progress)
            doc_before = result.to_json()
            refused = None
            if repair and not result.corruptions:
                fixed = repair_image(img, repair, progress)
                repaired = fixed.repaired
                result = check_image(img, progress) if repaired else result
            elif repair:
                repaired = []
                refused = "structural corruption: a repair would risk data, nothing was changed"
            else:
                repaired = []
        finally:
            progress.close()
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
        progress = Progress(img.slot.image_clusters, "compacting")
        try:
            result = compact_image(img)
        finally:
            progress.close()
    if output == "json":
        emit_json(result)
    else:
        click.echo(f"Compacted {image}: {human_size(result['before'])} -> {human_size(result['after'])} "
                   f"({result['passes']} pass{'es' if result['passes'] != 1 else ''}, "
                   f"{result['moved']} cluster{'s' if result['moved'] != 1 else ''} moved)")


# -- map ------------------------------------------------------------------------------------

@click.command("map", context_settings=CONTEXT, help="""\
A picture of the image's clusters, coloured by what holds them: header area,
refcount tree, directory, snapshot table, key slots, each blob, clusters only
snapshots hold, and free space; hatched cells are shared (count > 1).  With
-o FILE.png it draws a grid (needs matplotlib); --output json prints the same
classification as runs of clusters.

\b
Examples:
  nvbox map vm.nvbox -o map.png
  nvbox map --output json vm.nvbox""")
@image_command(output=True)
@click.option("-o", "png", type=click.Path(dir_okay=False), help="Write a PNG picture to this file.")
@click.option("--columns", default=64, show_default=True, help="Clusters per row in the picture.")
def map_command(image, png, columns, output):
    with image.open("r") as img:
        description = cluster_map(img)
    if png:
        render_png(description, png, columns)
    if output == "json":
        emit_json(description)
        return
    totals = description["totals"]
    click.echo(f"{description['image_clusters']} clusters of {human_size(description['cluster_size'])}: "
               + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
               + f"; {description['shared_clusters']} shared, {description['fragments']} blob extents")
    if png:
        click.echo(f"Picture written to {png}")

"""The ``nvbox`` command, in the style of qemu-img.

Every subcommand opens the image, does one thing, and closes it.  Errors are
never tracebacks: any ``NvboxError`` (and ``OSError``, and Ctrl-C) ends the
command with one line ``nvbox: error: <code>: <message>`` on stderr, or with
``--output json`` the document ``{"error": {"code": ..., "message": ...}}`` on
stdout, and a non-zero exit status (1; ``check`` uses qemu-img's codes).

Secrets are never command-line values: ``--key-file F``, ``--passphrase-file
F`` or the environment variable ``NVBOX_PASSPHRASE``.  ``nvbox.crypto`` is
imported only when one of them is given (or an encrypted image is met).
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import os
import re
import struct
import sys
import tempfile
import uuid

import click

import nvbox

from . import _der as der
from . import _format as fmt
from .errors import NvboxError, error_class, raise_code

__all__ = ["cli", "main", "load_key", "measure_paths", "dump_image", "collect_files"]

OUTPUT_CHOICES = click.Choice(["human", "json"])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Exit codes of `check` (spec section 13, as qemu-img check).
EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS, EXIT_UNSUPPORTED = 0, 1, 2, 3, 63


# -- errors -------------------------------------------------------------------------------

class _CliFailure(Exception):
    """An error that is not an NvboxError but is reported the same way."""

    def __init__(self, code, message, kind="state"):
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind


def _missing_crypto(exc: ImportError) -> bool:
    """True when ``exc`` says the nvbox.crypto module is absent."""
    name = exc.name or ""
    return name.startswith("nvbox.crypto") or (name == "nvbox" and "crypto" in str(exc))


def _unsupported_crypto() -> NvboxError:
    return error_class("feature.incompatible")(
        "encryption is not available in this installation (the nvbox.crypto module is missing)")


def _as_error(exc: BaseException):
    """(code, message, kind) for an exception the CLI reports, or None."""
    if isinstance(exc, NvboxError):
        return exc.code, exc.message, exc.kind
    if isinstance(exc, _CliFailure):
        return exc.code, exc.message, exc.kind
    if isinstance(exc, ImportError) and _missing_crypto(exc):
        e = _unsupported_crypto()
        return e.code, e.message, e.kind
    if isinstance(exc, OSError):
        msg = exc.strerror or str(exc)
        if exc.filename:
            msg = f"{exc.filename}: {msg}"
        return "io.error", msg, "state"
    return None


def _emit_error(code: str, message: str, output: str) -> None:
    if output == "json":
        click.echo(json.dumps({"error": {"code": code, "message": message}}))
    else:
        click.echo(f"nvbox: error: {code}: {message}", err=True)


def _guard(exit_for=None):
    """Decorator: turn errors into one line (or a JSON document) and an exit status."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            output = kwargs.get("output") or "human"
            try:
                return fn(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
                raise
            except KeyboardInterrupt:
                _emit_error("interrupted", "interrupted", output)
                raise click.exceptions.Exit(130)
            except BrokenPipeError:
                # The reader went away (nvbox get ... | head): exit quietly.
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                except (OSError, ValueError, AttributeError):
                    pass
                raise click.exceptions.Exit(1)
            except Exception as exc:  # noqa: BLE001 - reported below, never a traceback
                err = _as_error(exc)
                if err is None:
                    raise
                code, message, kind = err
                _emit_error(code, message, output)
                raise click.exceptions.Exit(exit_for(kind) if exit_for else 1)
        return wrapper
    return deco


# -- keys ----------------------------------------------------------------------------------

def load_key(key_file=None, passphrase_file=None, *, environ=None):
    """Build the key from ``--key-file``, ``--passphrase-file`` or ``NVBOX_PASSPHRASE``.

    Returns None when none is given.  ``nvbox.crypto`` is imported only when a key
    is given.  A passphrase file's one trailing newline is not part of the
    passphrase.
    """
    environ = os.environ if environ is None else environ
    if key_file and passphrase_file:
        raise_code("usage.argument", "give at most one of --key-file and --passphrase-file")
    passphrase = environ.get("NVBOX_PASSPHRASE")
    if not key_file and not passphrase_file and passphrase is None:
        return None
    try:
        from . import crypto
    except ImportError as exc:
        if _missing_crypto(exc):
            raise _unsupported_crypto() from None
        raise
    if key_file:
        return crypto.Key.from_key_file(key_file)
    if passphrase_file:
        with open(passphrase_file, "rb") as f:
            data = f.read()
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return crypto.Key.from_passphrase(data)
    return crypto.Key.from_passphrase(passphrase.encode("utf-8"))


def key_options(fn):
    fn = click.option("--passphrase-file", type=click.Path(dir_okay=False), metavar="FILE",
                      help="Read the passphrase from FILE (one trailing newline is ignored).")(fn)
    fn = click.option("--key-file", type=click.Path(dir_okay=False), metavar="FILE",
                      help="Unlock with the key file FILE.  Without either option the "
                           "environment variable NVBOX_PASSPHRASE is used when set.")(fn)
    return fn


def output_option(fn):
    return click.option("--output", type=OUTPUT_CHOICES, default="human", show_default=True,
                        help="Human-readable text or one JSON document on stdout.")(fn)


def _open(path, mode, key_file=None, passphrase_file=None):
    return nvbox.open(path, mode, key=load_key(key_file, passphrase_file))


def _json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


# -- formatting ----------------------------------------------------------------------------

def human_size(n) -> str:
    """4096 -> '4 KiB', 1536 -> '1.5 KiB', 100 -> '100 B'."""
    if n is None:
        return "-"
    n = int(n)
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024.0
        if n < 1024 or unit == "EiB":
            text = f"{n:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"  # pragma: no cover


def _time(t) -> str:
    if not t:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(t)


_SIZE_RE = re.compile(r"[0-9.]+ (B|[KMGTPE]iB)")


def _table(rows, header) -> list[str]:
    """Columns: numbers (and sizes) right-aligned, text left-aligned, the header to match."""
    cols = len(header)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(cols)]
    right = [i < cols - 1 and all(isinstance(r[i], int) or _SIZE_RE.fullmatch(str(r[i])) for r in rows)
             for i in range(cols)]
    lines = []
    for r in [header] + rows:
        cells = [str(c).rjust(widths[i]) if right[i] else str(c).ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return lines


# -- the command group ---------------------------------------------------------------------

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


def main(argv=None) -> None:
    """Console entry point (``nvbox``)."""
    cli.main(args=argv, prog_name="nvbox")


# -- create --------------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT, help="""\
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
@click.option("--cluster-size", default="4096", show_default=True, metavar="N",
              help="Cluster size: a power of two from 512 to 2M (suffixes K, M allowed).")
@click.option("--capacity", metavar="SIZE", default=None, help="Fixed capacity in bytes (e.g. 64M), or 'device'.")
@click.option("--encrypt", is_flag=True, help="Encrypt and authenticate every cluster (AES-256-GCM).")
@click.option("--overwrite", is_flag=True, help="Reuse an existing file or block device.")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def create(image, cluster_size, capacity, encrypt, overwrite, key_file, passphrase_file):
    key = load_key(key_file, passphrase_file)
    if encrypt and key is None:
        raise_code("key.missing", "an encrypted image needs --key-file, --passphrase-file or NVBOX_PASSPHRASE")
    with nvbox.create(image, cluster_size=cluster_size, capacity=capacity, encrypt=encrypt, key=key,
                      overwrite=overwrite) as img:
        info = img.info()
    cap = f"{info['capacity']}" if info["capacity"] else "growable"
    click.echo(f"Formatting '{image}', fmt=nvbox cluster_size={info['cluster_size']} capacity={cap} "
               f"encryption={'on' if info['encrypted'] else 'off'}")


# -- put / get / rm ------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT, help="""\
Store FILE (or stdin, with '-' or no FILE) as blob TAG, replacing any old contents,
in one atomic commit.

\b
Examples:
  nvbox put vm.nvbox tpm/permanent tpm2-00.permall
  echo -n 'eeprom' | nvbox put vm.nvbox nic0/eeprom -""")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("tag")
@click.argument("file", required=False, default="-")
@_guard()
def put(image, tag, file, key_file, passphrase_file):
    if file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(file, "rb") as f:
            data = f.read()
    with _open(image, "rw", key_file, passphrase_file) as img:
        img[tag] = data


@cli.command(context_settings=CONTEXT, help="""\
Write blob TAG to stdout, or to FILE with -o.  With --snapshot, read the blob as
it was in that snapshot.

\b
Examples:
  nvbox get vm.nvbox tpm/permanent -o permall.bin
  nvbox get vm.nvbox tpm/permanent --snapshot before-upgrade -o old.bin
  nvbox get vm.nvbox nic0/eeprom | xxd""")
@click.option("-o", "--output-file", "output_file", metavar="FILE", help="Write to FILE instead of stdout.")
@click.option("--snapshot", metavar="NAME", help="Read from snapshot NAME.")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("tag")
@_guard()
def get(image, tag, output_file, snapshot, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        data = img.snapshots.view(snapshot)[tag] if snapshot is not None else img[tag]
    if output_file and output_file != "-":
        with open(output_file, "wb") as f:
            f.write(data)
    else:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()


@cli.command(context_settings=CONTEXT, help="""\
Delete blob TAG (several tags are deleted together, in one commit).

\b
Examples:
  nvbox rm vm.nvbox nic0/eeprom
  nvbox rm vm.nvbox old/a old/b""")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("tags", metavar="TAG...", nargs=-1, required=True)
@_guard()
def rm(image, tags, key_file, passphrase_file):
    with _open(image, "rw", key_file, passphrase_file) as img:
        with img.transaction():
            for tag in tags:
                del img[tag]


# -- ls / info ------------------------------------------------------------------------------

def _entries(img, snapshot):
    entries = img.entries() if snapshot is None else img.snapshots.view(snapshot).entries()
    return sorted(entries, key=lambda e: e.name.encode("utf-8"))


@cli.command(context_settings=CONTEXT, help="""\
List the blobs (of the active state, or of snapshot NAME).  -l adds the size and
how each blob is stored: inline in its directory entry, or in clusters through a
cluster map of the given depth.

\b
Examples:
  nvbox ls vm.nvbox
  nvbox ls -l vm.nvbox --snapshot before-upgrade
  nvbox ls --output json vm.nvbox""")
@click.option("-l", "long", is_flag=True, help="Long listing: size and storage.")
@click.option("--snapshot", metavar="NAME", help="List snapshot NAME's blobs.")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def ls(image, long, snapshot, output, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        entries = _entries(img, snapshot)
    if output == "json":
        _json({"snapshot": snapshot, "blobs": [{"name": e.name, "size": e.size, "inline": e.inline,
                                                "depth": e.depth} for e in entries]})
        return
    if not long:
        for e in entries:
            click.echo(e.name)
        return
    rows = [[human_size(e.size), "inline" if e.inline else f"clusters, depth {e.depth}", e.name] for e in entries]
    if rows:
        for line in _table(rows, ["SIZE", "STORAGE", "NAME"]):
            click.echo(line)
    total = sum(e.size for e in entries)
    click.echo(f"{len(entries)} blob{'s' if len(entries) != 1 else ''}, {human_size(total)}")


@cli.command(context_settings=CONTEXT, help="""\
Show what the image is: format, cluster size, capacity, size, generation, blob and
snapshot counts, encryption, feature bits, creator.  The generation can be kept
outside the image to detect a rollback of the whole file (spec 10.3).

\b
Examples:
  nvbox info vm.nvbox
  nvbox info --output json vm.nvbox""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def info(image, output, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        doc = img.info()
        doc["file_size"] = img.dev.size()
    if output == "json":
        _json(doc)
        return
    cs = doc["cluster_size"]
    cap = ("growable" if doc["capacity"] is None
           else f"{human_size(doc['capacity'])} ({doc['capacity'] // cs} clusters, fixed)")
    creator = next((bytes.fromhex(e["data_hex"]).decode("utf-8", "replace")
                    for e in doc["extensions"] if e["type"] == fmt.EXT_CREATOR), None)
    lines = [
        ("image", image),
        ("file format", f"nvbox (version {doc['version']})"),
        ("cluster size", f"{human_size(cs)} ({cs} bytes)"),
        ("capacity", cap),
        ("image size", f"{human_size(doc['image_size'])} ({doc['image_clusters']} clusters)"),
        ("disk size", human_size(doc["file_size"])),
        ("used", f"{human_size(doc['used_clusters'] * cs)} ({doc['used_clusters']} clusters, "
                 f"{doc['free_clusters']} free)"),
        ("blobs", str(doc["blob_count"])),
        ("snapshots", str(doc["snapshot_count"])),
        ("encrypted", "yes (AES-256-GCM)" if doc["encrypted"] else "no"),
        ("generation", str(doc["generation"])),
        ("uuid", doc["image_uuid"]),
        ("created", _time(doc["create_time"])),
        ("last commit", _time(doc["commit_time"])),
        ("features", f"incompatible 0x{doc['incompatible_features']:x}, compatible "
                     f"0x{doc['compatible_features']:x}, autoclear 0x{doc['autoclear_features']:x}"),
        ("tree depths", f"directory {doc['dir_depth']}, refcount {doc['refcount_depth']}"),
    ]
    if creator is not None:
        lines.append(("creator", creator))
    others = [e for e in doc["extensions"] if e["type"] != fmt.EXT_CREATOR]
    for e in others:
        lines.append(("extension", f"type {e['type']}{' (required)' if e['required'] else ''} {e['data_hex']}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{(k + ':').ljust(width + 1)} {v}")


# -- check ----------------------------------------------------------------------------------

def _check_exit(kind: str) -> int:
    return {"corrupt": EXIT_CORRUPT, "unsupported": EXIT_UNSUPPORTED}.get(kind, EXIT_FAILED)


class _Progress:
    """click.progressbar on stderr, only when stderr is a terminal and the image is large."""

    THRESHOLD = 16384  # clusters

    def __init__(self, total, label):
        self.bar = None
        self.done = 0
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty and total >= self.THRESHOLD:
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, done, total):
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


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


@cli.command(context_settings=CONTEXT, help="""\
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
@click.option("-r", "--repair", type=click.Choice(["leaks", "all"]), default=None, help="Repair leaks, or all counts.")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard(exit_for=_check_exit)
def check(image, repair, output, key_file, passphrase_file):
    from .check import check_image, repair_image
    try:
        img = _open(image, "rw" if repair else "r", key_file, passphrase_file)
    except NvboxError as exc:
        if exc.kind not in ("corrupt", "unsupported"):
            raise
        code = _check_exit(exc.kind)
        if output == "json":
            _json({"verdict": "corrupt" if exc.kind == "corrupt" else "unsupported", "opened": False,
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
        progress = _Progress(img.slot.image_clusters, "checking")
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
        _json(doc)
    else:
        _print_check(doc)
    raise click.exceptions.Exit(result.exit_code)


# -- import / export -----------------------------------------------------------------------

def collect_files(paths) -> list[tuple[str, str]]:
    """(blob name, file path) for FILE and DIR arguments, sorted by name.

    A FILE becomes a blob named by its base name; a DIR contributes every regular
    file below it, named by its path relative to DIR with '/' separators.
    """
    out: dict[str, str] = {}
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for fname in sorted(files):
                    full = os.path.join(root, fname)
                    if not os.path.isfile(full):
                        continue
                    rel = os.path.relpath(full, p).replace(os.sep, "/")
                    _add_name(out, rel, full)
        elif os.path.exists(p):
            _add_name(out, os.path.basename(os.path.normpath(p)), p)
        else:
            raise FileNotFoundError(2, "No such file or directory", p)
    return sorted(out.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))


def _add_name(out, name, path):
    if name in out:
        raise_code("usage.argument", f"two files would become blob {name!r}: {out[name]} and {path}")
    out[name] = path


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@cli.command("import", context_settings=CONTEXT, help="""\
Store every regular file below DIR as a blob named by its path relative to DIR
('/' separated), replacing blobs of the same name, in one atomic commit.  Other
blobs are left alone.

\b
Examples:
  nvbox import vm.nvbox state/      # state/tpm/permanent -> blob tpm/permanent""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True))
@_guard()
def import_(image, directory, output, key_file, passphrase_file):
    files = collect_files([directory])
    total = 0
    with _open(image, "rw", key_file, passphrase_file) as img:
        with img.transaction():
            for name, path in files:
                data = _read(path)
                total += len(data)
                img[name] = data
    if output == "json":
        _json({"imported": len(files), "bytes": total, "blobs": [n for n, _ in files]})
    else:
        click.echo(f"Imported {len(files)} blob{'s' if len(files) != 1 else ''} ({human_size(total)}).")


def _export_path(directory, name) -> str:
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in name and os.sep == "\\":
        raise_code("usage.argument", f"blob {name!r} cannot be exported as a file path")
    return os.path.join(directory, *parts)


@cli.command(context_settings=CONTEXT, help="""\
Write every blob to a file below DIR named by the blob's name ('/' makes
subdirectories): the inverse of import.  DIR is created if needed.  Names that
are not safe relative paths ('..', empty components, a leading '/') are refused
before anything is written.

\b
Examples:
  nvbox export vm.nvbox state/
  nvbox export --snapshot before-upgrade vm.nvbox old-state/""")
@click.option("--snapshot", metavar="NAME", help="Export snapshot NAME's blobs.")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@_guard()
def export(image, directory, snapshot, output, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        source = img.snapshots.view(snapshot) if snapshot is not None else img
        names = sorted(source.names())
        paths = {n: _export_path(directory, n) for n in names}
        as_dirs = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
        clash = sorted(set(names) & as_dirs)
        if clash:
            raise_code("usage.argument", f"blob {clash[0]!r} is also a directory of another blob's name")
        total = 0
        os.makedirs(directory, exist_ok=True)
        for n in names:
            data = source[n]
            total += len(data)
            os.makedirs(os.path.dirname(paths[n]), exist_ok=True)
            with open(paths[n], "wb") as f:
                f.write(data)
    if output == "json":
        _json({"exported": len(names), "bytes": total, "blobs": names})
    else:
        click.echo(f"Exported {len(names)} blob{'s' if len(names) != 1 else ''} ({human_size(total)}).")


# -- measure --------------------------------------------------------------------------------

def _measure_key(encrypt):
    """A throw-away key for measuring an encrypted layout (sizes do not depend on it)."""
    if not encrypt:
        return None, None
    try:
        from . import crypto
    except ImportError as exc:
        if _missing_crypto(exc):
            raise _unsupported_crypto() from None
        raise
    fd, path = tempfile.mkstemp(prefix="nvbox-measure-", suffix=".key")
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return crypto.Key.from_key_file(path), path


def measure_paths(paths, cluster_size=4096, encrypt=False) -> dict:
    """The capacities a fixed image needs for the files (see ``nvbox measure --help``)."""
    files = collect_files(paths)
    key, key_path = _measure_key(encrypt)
    try:
        img = nvbox.create(None, cluster_size=cluster_size, encrypt=encrypt, key=key)
    finally:
        if key_path:
            os.unlink(key_path)
    with img:
        geo = img.geo
        floor = geo.header_clusters + 4            # the least capacity create accepts
        empty = img.slot.image_clusters
        total = 0
        with img.transaction():
            for name, path in files:
                data = _read(path)
                total += len(data)
                img[name] = data
        minimum = max(img.slot.image_clusters, floor)
        with img.transaction():                     # the next save of the whole state
            for name, path in files:
                img[name] = _read(path)
        required = max(img.slot.image_clusters, minimum)
        cs = geo.cluster_size
    return {
        "required": required * cs,
        "minimum": minimum * cs,
        "cluster_size": cs,
        "required_clusters": required,
        "minimum_clusters": minimum,
        "headroom_clusters": required - minimum,
        "empty_image_clusters": empty,
        "encrypted": bool(encrypt),
        "files": len(files),
        "bytes": total,
    }


@cli.command(context_settings=CONTEXT, help="""\
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
@click.option("--cluster-size", default="4096", show_default=True, metavar="N", help="Cluster size of the image.")
@click.option("--encrypt", is_flag=True, help="Measure an encrypted layout (40-byte pointers, key slot table).")
@output_option
@click.argument("paths", metavar="FILE|DIR...", nargs=-1, required=True, type=click.Path(exists=True))
@_guard()
def measure(paths, cluster_size, encrypt, output):
    doc = measure_paths(paths, cluster_size, encrypt)
    if output == "json":
        _json(doc)
    else:
        click.echo(str(doc["required"]))


# -- dump -------------------------------------------------------------------------------------

def _hex(b) -> str:
    return bytes(b).hex()


def _zero_range(b) -> dict:
    d = {"length": len(b), "all_zero": not any(b)}
    if not d["all_zero"]:
        d["hex"] = _hex(b)
    return d


def _raw_pointer(raw, width) -> dict:
    """A pointer's fields by spec name, decoded without validation."""
    offset, crc = struct.unpack_from("<QI", raw, 0)
    if width == fmt.PLAIN_POINTER:
        return {"offset": offset, "crc": crc, "reserved": struct.unpack_from("<I", raw, 12)[0]}
    return {"offset": offset, "crc": crc, "nonce": _hex(raw[12:24]), "tag": _hex(raw[24:40])}


def _ptr(p, width) -> dict:
    return _raw_pointer(p.encode(width), width)


def _slot_tail(raw) -> dict:
    """Bytes 248..475 of a slot: reserved1, or, in a library whose Slot has the
    ``alloc_hint`` field (u64 at 248), that field and reserved1 from 256."""
    if "alloc_hint" in getattr(fmt.Slot, "__dataclass_fields__", {}):
        return {"alloc_hint": struct.unpack_from("<Q", raw, 248)[0], "reserved1": _zero_range(raw[256:476])}
    return {"reserved1": _zero_range(raw[248:476])}


class _Dumper:
    def __init__(self, path, key):
        self.path = path
        self.key = key
        self.errors = []
        self.doc = {"image": path}

    def problem(self, exc, where, offset=None):
        err = _as_error(exc) or ("error", str(exc), "")
        item = {"code": err[0], "message": f"{where}: {err[1]}"}
        if offset is not None:
            item["offset"] = offset
        self.errors.append(item)

    # header area: decoded field by field, no validation, so a damaged image still dumps
    def header_area(self, area):
        doc = self.doc
        h = {"type": "header", "offset": 0, "length": fmt.SECTOR}
        if len(area) < fmt.HEADER_AREA:
            self.errors.append({"code": "image.truncated", "message": f"the file holds {len(area)} bytes"})
            area = area.ljust(fmt.HEADER_AREA, b"\0")
        (version, header_length, cluster_bits, refcount_order, reserved0, header_flags, image_uuid,
         capacity, create_time) = struct.unpack_from("<IIBBHI16sQQ", area, 8)
        hl = header_length if header_length % 8 == 0 and 128 <= header_length <= 504 else fmt.HEADER_LENGTH
        header_crc = struct.unpack_from("<I", area, 508)[0]
        h["fields"] = {
            "magic": _hex(area[0:8]), "version": version, "header_length": header_length,
            "cluster_bits": cluster_bits, "refcount_order": refcount_order, "reserved0": reserved0,
            "header_flags": header_flags, "image_uuid": _hex(image_uuid), "capacity_clusters": capacity,
            "create_time": create_time, "reserved1": _zero_range(area[56:hl]), "header_crc": header_crc,
        }
        h["checks"] = {"magic_ok": area[:8] == fmt.MAGIC, "crc_ok": fmt.crc32c(area[:508]) == header_crc}
        h["decoded"] = {"image_uuid": str(uuid.UUID(bytes=bytes(image_uuid))), "create_time": _time(create_time)}
        exts, pos = [], hl
        while pos + 8 <= 508:
            ext_type, ext_flags, length = struct.unpack_from("<HHI", area, pos)
            padded = (length + 7) // 8 * 8
            rec = {"type": "header_extension", "offset": pos, "length": 8 + min(padded, 508 - pos - 8)}
            data = area[pos + 8:min(pos + 8 + length, 508)]
            rec["fields"] = {"ext_type": ext_type, "ext_flags": ext_flags, "ext_length": length,
                             "ext_data": _hex(data)}
            if ext_type == fmt.EXT_END:
                rec["decoded"] = {"name": "end"}
                exts.append(rec)
                break
            rec["decoded"] = {"name": "creator" if ext_type == fmt.EXT_CREATOR else "unknown",
                              "required": bool(ext_flags & 1)}
            if ext_type == fmt.EXT_CREATOR:
                rec["decoded"]["text"] = bytes(data).decode("utf-8", "replace")
            exts.append(rec)
            if pos + 8 + padded + 8 > 508:
                self.errors.append({"code": "header.extension", "message": "extension runs past the header",
                                    "offset": pos})
                break
            pos += 8 + padded
        h["extensions"] = exts
        doc["header"] = h
        self.cluster_bits = cluster_bits if fmt.MIN_CLUSTER_BITS <= cluster_bits <= fmt.MAX_CLUSTER_BITS else None

        slots = []
        valid = []
        for index, off in enumerate(fmt.SLOT_OFFSETS):
            raw = area[off:off + fmt.SECTOR]
            (magic, generation, incompat, compat, autoclear, image_clusters, blob_count, next_snapshot_id,
             commit_time, refcount_depth, dir_depth, snaptable_depth, reserved0, snapshot_count,
             snaptable_size) = fmt._SLOT.unpack_from(raw)
            width = fmt.ENCRYPTED_POINTER if incompat & fmt.INCOMPAT_ENCRYPTED else fmt.PLAIN_POINTER
            is_valid = fmt.slot_is_valid(raw, index)
            if is_valid:
                valid.append((generation, index))
            slots.append({
                "type": "commit_slot", "name": "AB"[index], "offset": off, "length": fmt.SECTOR,
                "valid": is_valid, "active": False, "generation": generation,
                "fields": {
                    "slot_magic": _hex(magic), "generation": generation,
                    "incompatible_features": incompat, "compatible_features": compat,
                    "autoclear_features": autoclear, "image_clusters": image_clusters,
                    "blob_count": blob_count, "next_snapshot_id": next_snapshot_id,
                    "commit_time": commit_time, "refcount_depth": refcount_depth, "dir_depth": dir_depth,
                    "snaptable_depth": snaptable_depth, "reserved0": reserved0,
                    "snapshot_count": snapshot_count, "snaptable_size": snaptable_size,
                    "refcount_root": _raw_pointer(raw[88:128], width),
                    "dir_root": _raw_pointer(raw[128:168], width),
                    "snaptable_root": _raw_pointer(raw[168:208], width),
                    "keyslots": _raw_pointer(raw[208:224], fmt.PLAIN_POINTER),
                    **_slot_tail(raw),
                    "slot_mac": _hex(raw[476:508]),
                    "slot_crc": struct.unpack_from("<I", raw, 508)[0],
                },
                "decoded": {"commit_time": _time(commit_time), "encrypted": bool(incompat & 1),
                            "pointer_width": width},
            })
        if valid:
            slots[max(valid)[1]]["active"] = True
        doc["slots"] = slots
        doc["active_slot"] = "AB"[max(valid)[1]] if valid else None

    # trees: read through the library, every cluster verified against its pointer
    def trees(self, img):
        self.img, self.geo, self.store = img, img.geo, img.store
        geo = self.geo
        self.width = geo.pointer_size
        self.doc["geometry"] = {"cluster_size": geo.cluster_size, "pointer_size": geo.pointer_size,
                                "fanout": geo.fanout, "header_clusters": geo.header_clusters,
                                "inline_max": geo.inline_max, "encrypted": img.encrypted,
                                "image_clusters": img.slot.image_clusters}
        self.ref_nodes = []
        self.dir_nodes = []
        self.dir_seen = {}
        self.maps = []
        self.map_seen = {}
        slot = img.slot
        self.refcount(slot.refcount_root, slot.refcount_depth, 0)
        self.doc["refcount_tree"] = {"depth": slot.refcount_depth, "root": _ptr(slot.refcount_root, self.width),
                                     "nodes": self.ref_nodes}
        if slot.dir_depth:
            self.directory(slot.dir_root, slot.dir_depth - 1, "active")
        self.doc["directory"] = {"depth": slot.dir_depth, "root": _ptr(slot.dir_root, self.width),
                                 "blob_count": slot.blob_count, "nodes": self.dir_nodes}
        self.doc["cluster_maps"] = self.maps
        self.snapshot_table(slot)
        self.doc["keyslot_table"] = self.keyslots(slot.keyslots) if not slot.keyslots.is_null else None

    def _struct(self, type_, ptr, **extra):
        d = {"type": type_, "offset": ptr.offset, "cluster": ptr.offset >> self.geo.cluster_bits,
             "length": self.geo.cluster_size}
        d.update(extra)
        return d

    def _read(self, ptr, kind, where):
        try:
            return self.store.read_raw(ptr, kind)
        except Exception as exc:  # noqa: BLE001 - recorded, the dump goes on
            if _as_error(exc) is None:
                raise
            self.problem(exc, where, ptr.offset)
            return None

    def _pointers(self, raw):
        w, out = self.width, []
        for j in range(self.geo.fanout):
            chunk = raw[j * w:(j + 1) * w]
            if any(chunk):
                p = _raw_pointer(chunk, w)
                p["index"] = j
                out.append(p)
        return out

    def _children(self, raw, where, offset):
        try:
            return fmt.decode_pointers(raw, self.geo)
        except NvboxError as exc:
            self.problem(exc, where, offset)
            return []

    def refcount(self, ptr, level, first):
        if ptr.is_null:
            return
        geo = self.geo
        kind = fmt.KIND_REFBLOCK if level == 1 else fmt.KIND_REFINDEX
        raw = self._read(ptr, kind, f"refcount level {level}")
        span = geo.counts_per_block * geo.fanout ** (level - 1)
        if level == 1:
            node = self._struct("refcount_block", ptr, level=1, first_cluster=first)
            if raw is not None:
                counts = list(struct.unpack(f"<{geo.counts_per_block}H", raw))
                node["fields"] = {"counts": counts}
                node["decoded"] = {"nonzero": sum(1 for c in counts if c)}
            self.ref_nodes.append(node)
            return
        node = self._struct("refcount_index_node", ptr, level=level, first_cluster=first)
        self.ref_nodes.append(node)
        if raw is None:
            return
        node["fields"] = {"pointers": self._pointers(raw)}
        child_span = span // geo.fanout
        for j, ch in enumerate(self._children(raw, "refcount index node", ptr.offset)):
            self.refcount(ch, level - 1, first + j * child_span)

    def _tlvs(self, raw, start, end):
        """(tlv_start, tag, content_start, content_end) of each element in [start, end)."""
        out, pos = [], start
        while pos < end:
            tag, cs, ce = der.read_tlv(raw, pos, end)
            out.append((pos, tag, cs, ce))
            pos = ce
        return out

    def directory(self, ptr, level, owner):
        seen = self.dir_seen.get(ptr.offset)
        if seen is not None:
            if owner not in seen["trees"]:
                seen["trees"].append(owner)
            return
        node = self._struct("dir_node", ptr, trees=[owner])
        self.dir_seen[ptr.offset] = node
        self.dir_nodes.append(node)
        raw = self._read(ptr, fmt.KIND_DIR, f"directory node ({owner})")
        if raw is None:
            return
        magic, lvl, reserved0, count, body_length, reserved1 = struct.unpack_from("<4sBBHII", raw, 0)
        node["fields"] = {"node_magic": _hex(magic), "level": lvl, "reserved0": reserved0, "count": count,
                          "body_length": body_length, "reserved1": reserved1}
        node["level"] = lvl
        base = ptr.offset
        items = []
        try:
            decoded = fmt.decode_dir_node(raw, self.geo, level)
            _, body_cs, body_ce = der.read_tlv(raw, fmt.DIR_NODE_HEADER, fmt.DIR_NODE_HEADER + body_length)
            tlvs = self._tlvs(raw, body_cs, body_ce)
        except NvboxError as exc:
            self.problem(exc, f"directory node ({owner})", ptr.offset)
            node["body_hex"] = _hex(raw[fmt.DIR_NODE_HEADER:fmt.DIR_NODE_HEADER + min(body_length, len(raw))])
            return
        for (pos, _tag, cs, ce), item in zip(tlvs, decoded.items):
            if decoded.level == 0:
                e = item
                content = ({"inline": _hex(e.inline)} if e.inline is not None
                           else {"clusters": {"depth": e.depth, "root": _ptr(e.root, self.width)}})
                fields = {"name": e.name, "size": e.size, "content": content}
                if e.extra:
                    fields["extensions"] = _hex(e.extra)
                items.append({"type": "DirEntry", "offset": base + pos, "length": ce - pos, "fields": fields,
                              "decoded": {"key": _hex(e.key)}})
                if e.inline is None and not e.root.is_null:
                    self.cluster_map(e, owner)
            else:
                items.append({"type": "DirBranch", "offset": base + pos, "length": ce - pos,
                              "fields": {"lowKey": _hex(item.low_key), "child": _ptr(item.child, self.width)}})
        node["entries" if decoded.level == 0 else "branches"] = items
        if decoded.level > 0:
            for b in decoded.items:
                self.directory(b.child, decoded.level - 1, owner)

    def cluster_map(self, e, owner):
        seen = self.map_seen.get(e.root.offset)
        if seen is not None:
            if owner not in seen["trees"]:
                seen["trees"].append(owner)
            return
        m = {"blob": e.name, "trees": [owner], "size": e.size, "depth": e.depth,
             "root": _ptr(e.root, self.width), "nodes": [], "data_clusters": []}
        self.map_seen[e.root.offset] = m
        self.maps.append(m)
        self._map_walk(m, e.root, e.depth, 0, fmt.KIND_DATA)

    def _map_walk(self, m, ptr, level, base, data_kind):
        if ptr.is_null:
            return
        if level == 0:
            m["data_clusters"].append({"index": base, "offset": ptr.offset,
                                       "cluster": ptr.offset >> self.geo.cluster_bits, "crc": ptr.crc})
            return
        node = self._struct("map_node", ptr, level=level, first_index=base)
        m["nodes"].append(node)
        raw = self._read(ptr, fmt.KIND_MAP, f"cluster map of {m['blob']!r}")
        if raw is None:
            return
        node["fields"] = {"pointers": self._pointers(raw)}
        span = self.geo.fanout ** (level - 1)
        for j, ch in enumerate(self._children(raw, f"cluster map of {m['blob']!r}", ptr.offset)):
            self._map_walk(m, ch, level - 1, base + j * span, data_kind)

    def snapshot_table(self, slot):
        if not slot.snaptable_size:
            self.doc["snapshot_table"] = None
            return
        t = {"type": "SnapshotTable", "snaptable_size": slot.snaptable_size, "depth": slot.snaptable_depth,
             "root": _ptr(slot.snaptable_root, self.width)}
        m = {"blob": "(snapshot table)", "trees": ["snapshot table"], "size": slot.snaptable_size,
             "depth": slot.snaptable_depth, "root": t["root"], "nodes": [], "data_clusters": []}
        self._map_walk(m, slot.snaptable_root, slot.snaptable_depth, 0, fmt.KIND_SNAPDATA)
        t["map"] = m
        self.doc["snapshot_table"] = t
        cs = self.geo.cluster_size
        where = {d["index"]: d["offset"] for d in m["data_clusters"]}

        def absolute(pos):
            base = where.get(pos // cs)
            return None if base is None else base + pos % cs

        try:
            raw = self.img.trees.map_read(slot.snaptable_root, slot.snaptable_depth, slot.snaptable_size, 0,
                                          slot.snaptable_size, data_kind=fmt.KIND_SNAPDATA)
            records = self.img._snapshot_list()
            cs0, ce0 = der.parse_single(raw, 0, len(raw), der.SEQUENCE)
            tlvs = self._tlvs(raw, cs0, ce0)
        except Exception as exc:  # noqa: BLE001
            if _as_error(exc) is None:
                raise
            self.problem(exc, "snapshot table", slot.snaptable_root.offset)
            t["records"] = []
            return
        out = []
        for (pos, _tag, _cs, ce), r in zip(tlvs, records):
            fields = {"id": r.id, "name": r.name, "createTime": r.create_time, "blobCount": r.blob_count,
                      "dirDepth": r.dir_depth, "dirRoot": _ptr(r.dir_root, self.width)}
            if r.metadata is not None:
                fields["metadata"] = _hex(r.metadata)
            if r.extra:
                fields["extensions"] = _hex(r.extra)
            out.append({"type": "Snapshot", "offset": absolute(pos), "table_offset": pos, "length": ce - pos,
                        "fields": fields, "decoded": {"createTime": _time(r.create_time)}})
        t["records"] = out
        for r in records:
            if r.dir_depth:
                self.directory(r.dir_root, r.dir_depth - 1, f"snapshot:{r.name}")

    def keyslots(self, ptr):
        t = self._struct("keyslot_table", ptr)
        raw = self._read(ptr, 0, "key slot table")
        if raw is None:
            return t
        magic, version, num, cipher = struct.unpack_from("<4sHHI", raw, 0)
        slots = []
        for i in range(fmt.NUM_KEYSLOTS):
            off = 32 + i * fmt.KEYSLOT_SIZE
            chunk = raw[off:off + fmt.KEYSLOT_SIZE]
            kind, t_, m_, p_, salt, nonce, wrapped, tag = struct.unpack("<B3xIII16s12s32s16s4x", chunk)
            slots.append({"type": "key_slot", "index": i, "offset": ptr.offset + off, "length": fmt.KEYSLOT_SIZE,
                          "fields": {"kind": kind, "reserved": _hex(chunk[1:4]), "kdf_time": t_,
                                     "kdf_memory": m_, "kdf_lanes": p_, "salt": _hex(salt), "nonce": _hex(nonce),
                                     "wrapped_key": _hex(wrapped), "wrap_tag": _hex(tag),
                                     "reserved2": _hex(chunk[92:96])},
                          "decoded": {"kind": fmt.KEYSLOT_KINDS.get(kind, "unknown")}})
        end = 32 + fmt.NUM_KEYSLOTS * fmt.KEYSLOT_SIZE
        t["fields"] = {"ks_magic": _hex(magic), "ks_version": version, "num_slots": num, "cipher": cipher,
                       "reserved": _zero_range(raw[12:32]), "slots": slots, "padding": _zero_range(raw[end:])}
        return t


def dump_image(path, key=None) -> dict:
    """Every structure of the image at ``path`` with its offset (``nvbox dump``).

    The header and both commit slots are decoded without validation, so a damaged
    image still shows them; the trees are read through the library from the
    active slot.  Problems met on the way are listed under "errors"; an image
    that cannot be opened also gets "error" (the first such problem).
    """
    d = _Dumper(path, key)
    with open(path, "rb") as f:
        area = f.read(fmt.HEADER_AREA)
        d.doc["file_size"] = os.fstat(f.fileno()).st_size
    d.header_area(area)
    try:
        img = nvbox.open(path, "r", key=key)
    except Exception as exc:  # noqa: BLE001
        err = _as_error(exc)
        if err is None:
            raise
        d.doc["error"] = {"code": err[0], "message": err[1]}
        d.doc["errors"] = d.errors + [{"code": err[0], "message": f"open: {err[1]}"}]
        return d.doc
    with img:
        d.trees(img)
    d.doc["errors"] = d.errors
    return d.doc


def _render(obj, indent=0, label=None):
    """Indented text for a dump tree."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict) and "type" in obj and "offset" in obj:
        where = "-" if obj["offset"] is None else f"0x{obj['offset']:x}"
        extra = []
        for k in ("name", "index", "cluster", "level", "first_cluster", "first_index", "valid", "active",
                  "trees", "length"):
            if k in obj:
                v = obj[k]
                extra.append(f"{k}={','.join(v) if isinstance(v, list) else v}")
        lines.append(f"{pad}{label + ': ' if label else ''}{obj['type']} @{where} " + " ".join(extra))
        for k, v in (obj.get("fields") or {}).items():
            lines += _render_field(k, v, indent + 1)
        for k, v in (obj.get("decoded") or {}).items():
            if k != "key":
                lines.append(f"{pad}    ({k}: {v})")
        for k in ("extensions", "entries", "branches"):
            for item in obj.get(k, []):
                lines += _render(item, indent + 1)
        return lines
    if isinstance(obj, dict):
        for k, v in obj.items():
            lines += _render_field(k, v, indent)
        return lines
    return [f"{pad}{obj}"]


def _short(v, limit=64):
    s = str(v)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


def _ptr_text(p) -> str:
    if not p.get("offset"):
        return "null"
    s = f"-> 0x{p['offset']:x} crc=0x{p['crc']:08x}"
    if "tag" in p:
        s += f" nonce={p['nonce']} tag={p['tag']}"
    return s


def _render_field(k, v, indent):
    pad = "  " * indent
    if isinstance(v, dict) and "crc" in v and "offset" in v:
        return [f"{pad}{k:<22} {_ptr_text(v)}"]
    if isinstance(v, dict) and "all_zero" in v:
        return [f"{pad}{k:<22} {v['length']} bytes, {'zero' if v['all_zero'] else 'NOT ZERO ' + _short(v['hex'])}"]
    if k == "counts" and isinstance(v, list):
        nz = [(i, c) for i, c in enumerate(v) if c]
        return [f"{pad}{k:<22} {len(nz)} non-zero of {len(v)}: "
                + _short(" ".join(f"[{i}]={c}" for i, c in nz), 200)]
    if k == "pointers" and isinstance(v, list):
        return [f"{pad}{k:<22} {len(v)} non-null"] + [f"{pad}  [{p['index']}] {_ptr_text(p)}" for p in v]
    if isinstance(v, dict):
        out = [f"{pad}{k}:"]
        for kk, vv in v.items():
            out += _render_field(kk, vv, indent + 1)
        return out
    if isinstance(v, list):
        out = []
        for item in v:
            out += _render(item, indent, k)
        return out
    if isinstance(v, int) and k.endswith(("features", "_crc", "crc")):
        return [f"{pad}{k:<22} 0x{v:x}"]
    return [f"{pad}{k:<22} {_short(v, 100)}"]


def _render_dump(doc) -> list[str]:
    lines = [f"image: {doc['image']}  ({doc.get('file_size')} bytes)"]
    if "geometry" in doc:
        g = doc["geometry"]
        lines.append("geometry: " + ", ".join(f"{k}={v}" for k, v in g.items()))
    lines += _render(doc["header"])
    for s in doc["slots"]:
        lines += _render(s)
    lines.append(f"active slot: {doc['active_slot']}")
    if "refcount_tree" in doc:
        rt = doc["refcount_tree"]
        lines.append(f"refcount tree: depth {rt['depth']}, root {_ptr_text(rt['root'])}")
        for n in rt["nodes"]:
            lines += _render(n, 1)
        d = doc["directory"]
        lines.append(f"directory: depth {d['depth']}, {d['blob_count']} blobs, root {_ptr_text(d['root'])}")
        for n in d["nodes"]:
            lines += _render(n, 1)
        lines.append(f"cluster maps: {len(doc['cluster_maps'])}")
        for m in doc["cluster_maps"]:
            lines += _render_map(m)
        t = doc["snapshot_table"]
        if t is None:
            lines.append("snapshot table: none")
        else:
            lines.append(f"snapshot table: {t['snaptable_size']} bytes, depth {t['depth']}, "
                         f"root {_ptr_text(t['root'])}")
            lines += _render_map(t["map"])
            for r in t["records"]:
                lines += _render(r, 1)
        k = doc["keyslot_table"]
        lines.append("key slot table: none" if k is None else "key slot table:")
        if k is not None:
            lines += _render(k, 1)
    for e in doc.get("errors", []):
        where = f" at 0x{e['offset']:x}" if e.get("offset") is not None else ""
        lines.append(f"ERROR {e['code']}: {e['message']}{where}")
    return lines


def _render_map(m):
    trees = ",".join(m["trees"])
    lines = [f"  map of {m['blob']!r} [{trees}]: size {m['size']}, depth {m['depth']}, root {_ptr_text(m['root'])}"]
    for n in m["nodes"]:
        lines += _render(n, 2)
    dc = m["data_clusters"]
    if dc:
        text = " ".join(f"{d['index']}:0x{d['offset']:x}" for d in dc)
        lines.append(f"    data clusters ({len(dc)}): {_short(text, 300)}")
    return lines


@cli.command(context_settings=CONTEXT, help="""\
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
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False, exists=True))
@_guard()
def dump(image, output, key_file, passphrase_file):
    doc = dump_image(image, load_key(key_file, passphrase_file))
    if output == "json":
        _json(doc)
    else:
        for line in _render_dump(doc):
            click.echo(line)
        if "error" in doc:
            click.echo(f"nvbox: error: {doc['error']['code']}: {doc['error']['message']}", err=True)
    if "error" in doc:
        raise click.exceptions.Exit(1)


# -- snapshots -------------------------------------------------------------------------------

@cli.group(context_settings=CONTEXT, help="""\
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
@click.option("--metadata-file", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Store FILE's bytes (at most 1024) with the snapshot.")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("name")
@_guard()
def snapshot_create(image, name, metadata_file, key_file, passphrase_file):
    metadata = _read(metadata_file) if metadata_file else None
    with _open(image, "rw", key_file, passphrase_file) as img:
        img.snapshots.create(name, metadata=metadata)


@snapshot.command("list", context_settings=CONTEXT, help="""\
List the snapshots, oldest first.

\b
Examples:
  nvbox snapshot list vm.nvbox
  nvbox snapshot list --output json vm.nvbox""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def snapshot_list(image, output, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        snaps = img.snapshots.list()
    if output == "json":
        _json({"snapshots": [{"id": s.id, "name": s.name, "create_time": s.create_time, "blob_count": s.blob_count,
                              "metadata_hex": None if s.metadata is None else s.metadata.hex()} for s in snaps]})
        return
    if not snaps:
        click.echo("No snapshots.")
        return
    rows = [[s.id, s.name, s.blob_count, _time(s.create_time),
             "-" if s.metadata is None else human_size(len(s.metadata))] for s in snaps]
    for line in _table(rows, ["ID", "NAME", "BLOBS", "DATE", "METADATA"]):
        click.echo(line)


@snapshot.command("revert", context_settings=CONTEXT, help="""\
Make the active state equal snapshot NAME (the snapshot stays).

\b
Example:
  nvbox snapshot revert vm.nvbox before-upgrade""")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("name")
@_guard()
def snapshot_revert(image, name, key_file, passphrase_file):
    with _open(image, "rw", key_file, passphrase_file) as img:
        img.snapshots.revert(name)


@snapshot.command("delete", context_settings=CONTEXT, help="""\
Delete snapshot NAME, freeing what only it held.

\b
Example:
  nvbox snapshot delete vm.nvbox before-upgrade""")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("name")
@_guard()
def snapshot_delete(image, name, key_file, passphrase_file):
    with _open(image, "rw", key_file, passphrase_file) as img:
        img.snapshots.delete(name)


@snapshot.command("rename", context_settings=CONTEXT, help="""\
Rename snapshot NAME to NEW.

\b
Example:
  nvbox snapshot rename vm.nvbox before-upgrade v1.0""")
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("name")
@click.argument("new")
@_guard()
def snapshot_rename(image, name, new, key_file, passphrase_file):
    with _open(image, "rw", key_file, passphrase_file) as img:
        img.snapshots.rename(name, new)


# -- diff -----------------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT, help="""\
Blobs added, removed and changed from snapshot A to snapshot B, or to the active
state when B is not given.  Human output: '+ name' added, '- name' removed,
'M name' changed.  Shared subtrees are skipped unread, so the cost follows the
difference.

\b
Examples:
  nvbox diff vm.nvbox before-upgrade
  nvbox diff --output json vm.nvbox before-upgrade after-upgrade""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("a")
@click.argument("b", required=False)
@_guard()
def diff(image, a, b, output, key_file, passphrase_file):
    from .snapshots import diff as snap_diff
    with _open(image, "r", key_file, passphrase_file) as img:
        result = snap_diff(img, a, b)
    if output == "json":
        _json({"a": a, "b": b, **result})
        return
    lines = ([("+", n) for n in result["added"]] + [("-", n) for n in result["removed"]]
             + [("M", n) for n in result["changed"]])
    for mark, n in sorted(lines, key=lambda x: x[1]):
        click.echo(f"{mark} {n}")
    if not lines:
        click.echo("No differences.")


# -- optional subcommands: present only when their modules are ------------------------------

def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


if _have("nvbox.compact"):
    @cli.command(context_settings=CONTEXT, help="""\
Move live clusters toward the start of the image and give the tail back to the
file system, in crash-safe passes (each an ordinary commit).  The image must be
clean: run 'nvbox check -r all' first if it is not.

\b
Examples:
  nvbox compact vm.nvbox
  nvbox compact --output json vm.nvbox""")
    @output_option
    @key_options
    @click.argument("image", type=click.Path(dir_okay=False))
    @_guard()
    def compact(image, output, key_file, passphrase_file):
        from .compact import compact_image
        with _open(image, "rw", key_file, passphrase_file) as img:
            progress = _Progress(img.slot.image_clusters, "compacting")
            try:
                result = compact_image(img)
            finally:
                progress.close()
        if output == "json":
            _json(result)
        else:
            click.echo(f"Compacted {image}: {human_size(result['before'])} -> {human_size(result['after'])} "
                       f"({result['passes']} pass{'es' if result['passes'] != 1 else ''}, "
                       f"{result['moved']} cluster{'s' if result['moved'] != 1 else ''} moved)")


# -- key --------------------------------------------------------------------------------------

@cli.group(context_settings=CONTEXT, help="""\
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
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def key_list(image, output, key_file, passphrase_file):
    with _open(image, "r", key_file, passphrase_file) as img:
        slots = img.key_slots.list()
    if output == "json":
        _json({"slots": slots})
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
@output_option
@key_options
@click.option("--new-key-file", type=click.Path(dir_okay=False), metavar="FILE", help="The new key file.")
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A file holding the new passphrase.")
@click.argument("image", type=click.Path(dir_okay=False))
@_guard()
def key_add(image, output, key_file, passphrase_file, new_key_file, new_passphrase_file):
    new = _new_key(new_key_file, new_passphrase_file)
    with _open(image, "rw", key_file, passphrase_file) as img:
        index = img.key_slots.add(new)
    if output == "json":
        _json({"added": index})
    else:
        click.echo(f"Added key slot {index}.")


@key.command("remove", context_settings=CONTEXT, help="""\
Remove key slot SLOT (refused for the last one; see 'nvbox key list').

\b
Examples:
  nvbox key remove --passphrase-file pass.txt vm.nvbox 0""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("slot", type=int)
@_guard()
def key_remove(image, slot, output, key_file, passphrase_file):
    with _open(image, "rw", key_file, passphrase_file) as img:
        img.key_slots.remove(slot)
    if output == "json":
        _json({"removed": slot})
    else:
        click.echo(f"Removed key slot {slot}.")


# -- map ------------------------------------------------------------------------------------

@cli.command("map", context_settings=CONTEXT, help="""\
A picture of the image's clusters, coloured by what holds them: header area,
refcount tree, directory, snapshot table, key slots, each blob, clusters only
snapshots hold, and free space; hatched cells are shared (count > 1).  With
-o FILE.png it draws a grid (needs matplotlib); --output json prints the same
classification as runs of clusters.

\b
Examples:
  nvbox map vm.nvbox -o map.png
  nvbox map --output json vm.nvbox""")
@output_option
@key_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "png", type=click.Path(dir_okay=False), help="Write a PNG picture to this file.")
@click.option("--columns", default=64, show_default=True, help="Clusters per row in the picture.")
@_guard()
def map_command(image, png, columns, output, key_file, passphrase_file):
    from .clustermap import cluster_map, render_png
    with _open(image, "r", key_file, passphrase_file) as img:
        description = cluster_map(img)
    if png:
        render_png(description, png, columns)
    if output == "json":
        _json(description)
        return
    totals = description["totals"]
    click.echo(f"{description['image_clusters']} clusters of {human_size(description['cluster_size'])}: "
               + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
               + f"; {description['shared_clusters']} shared, {description['fragments']} blob extents")
    if png:
        click.echo(f"Picture written to {png}")

if __name__ == "__main__":  # pragma: no cover
    main()

"""What every ``nvbox`` subcommand shares (those of ``nvbox.cli`` and the live
servers' in ``nvbox.live``): error reporting, key options, output
formats, the ``image_command`` decorator, and text formatting helpers.

Errors are never tracebacks: any ``NvboxError`` (and ``OSError``, and Ctrl-C)
ends the command with one line ``nvbox: error: <code>: <message>`` on stderr,
or with ``--output json`` the document ``{"error": {"code": ..., "message":
...}}`` on stdout, and a non-zero exit status.

Secrets are never command-line values: ``--key-file F``, ``--passphrase-file
F`` or the environment variable ``NVBOX_PASSPHRASE``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys

import click

import nvbox

from . import crypto
from .dump import format_time
from .errors import NvboxError, raise_code

__all__ = [
    "CONTEXT", "OUTPUT_CHOICES", "ImageAccess", "Progress", "as_error", "emit_error", "emit_json", "format_time",
    "guard", "human_size", "image_command", "key_options", "load_key", "output_option", "read_file", "table",
]

OUTPUT_CHOICES = click.Choice(["human", "json"])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Exit codes of `check` (spec section 13, as qemu-img check).
EXIT_CLEAN, EXIT_FAILED, EXIT_CORRUPT, EXIT_LEAKS, EXIT_UNSUPPORTED = 0, 1, 2, 3, 63


# -- errors -------------------------------------------------------------------------------

def as_error(exc: BaseException):
    """(code, message, kind) for an exception the CLI reports, or None."""
    if isinstance(exc, NvboxError):
        return exc.code, exc.message, exc.kind
    if isinstance(exc, OSError):
        msg = exc.strerror or str(exc)
        if exc.filename:
            msg = f"{exc.filename}: {msg}"
        return "io.error", msg, "state"
    return None


def emit_error(code: str, message: str, output: str) -> None:
    if output == "json":
        click.echo(json.dumps({"error": {"code": code, "message": message}}))
    else:
        click.echo(f"nvbox: error: {code}: {message}", err=True)


def guard(exit_for=None):
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
                emit_error("interrupted", "interrupted", output)
                raise click.exceptions.Exit(130)
            except BrokenPipeError:
                # The reader went away (nvbox get ... | head): exit quietly.
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                except (OSError, ValueError, AttributeError):
                    pass
                raise click.exceptions.Exit(1)
            except (NvboxError, OSError) as exc:
                code, message, kind = as_error(exc)
                emit_error(code, message, output)
                raise click.exceptions.Exit(exit_for(kind) if exit_for else 1)
        return wrapper
    return deco


# -- keys ----------------------------------------------------------------------------------

def load_key(key_file=None, passphrase_file=None, *, environ=None):
    """Build the key from ``--key-file``, ``--passphrase-file`` or ``NVBOX_PASSPHRASE``.

    Returns None when none is given.  A passphrase file's one trailing newline is
    not part of the passphrase.
    """
    environ = os.environ if environ is None else environ
    if key_file and passphrase_file:
        raise_code("usage.argument", "give at most one of --key-file and --passphrase-file")
    passphrase = environ.get("NVBOX_PASSPHRASE")
    if not key_file and not passphrase_file and passphrase is None:
        return None
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


class ImageAccess:
    """The IMAGE argument with its key options: what a command opens."""

    def __init__(self, path, key_file=None, passphrase_file=None):
        self.path = path
        self.key_file, self.passphrase_file = key_file, passphrase_file

    def __str__(self):
        return self.path

    def key(self):
        return load_key(self.key_file, self.passphrase_file)

    def open(self, mode="r"):
        return nvbox.open(self.path, mode, key=self.key())


def image_command(*, output=False, exit_for=None, exists=False):
    """Decorator for a command on one image: the IMAGE argument (first), the key
    options, optionally --output, and the error guard.

    The function receives ``image`` as an ``ImageAccess`` instead of a path and
    no key options.  Put it directly below ``@click.command`` so that IMAGE comes
    before the command's other arguments.
    """

    def deco(fn):
        @functools.wraps(fn)
        def run(image, key_file, passphrase_file, **kwargs):
            return fn(image=ImageAccess(image, key_file, passphrase_file), **kwargs)

        wrapped = guard(exit_for)(run)
        wrapped = click.argument("image", type=click.Path(dir_okay=False, exists=exists))(wrapped)
        mine = len(getattr(wrapped, "__click_params__", []))
        wrapped = key_options(wrapped)
        if output:
            wrapped = output_option(wrapped)
        # click lists parameters in the reverse order of this list: moving the shared
        # options to its start shows them after the command's own in --help, while
        # IMAGE stays the first argument.
        params = wrapped.__click_params__
        params[:] = params[mine:] + params[:mine]
        return wrapped
    return deco


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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


_SIZE_RE = re.compile(r"[0-9.]+ (B|[KMGTPE]iB)")


def table(rows, header) -> list[str]:
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


class Progress:
    """A progress bar on stderr, shown only when stderr is a terminal and the work
    is ``large`` (worth waiting for).  Call it with ``(done, total)`` as the work
    goes on; the bar's length is ``total`` given here (an operation that reports
    against a larger total, as check does against every cluster while it visits
    only the used ones, still moves), and leaving the ``with`` block after the
    work succeeded fills it to 100%."""

    def __init__(self, total, label, large=True):
        self.bar = None
        self.total = max(int(total), 1)
        self.done = 0
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty and large:
            self.bar = click.progressbar(length=self.total, label=label, file=sys.stderr)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __call__(self, done, total=None):
        done = min(int(done), self.total)
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
        self.done = max(self.done, done)

    def __exit__(self, exc_type, exc, tb):
        if self.bar is not None:
            if exc_type is None:
                self(self.total)
            self.bar.__exit__(exc_type, exc, tb)
            self.bar = None
        return False


# Work below these sizes ends before a bar would be worth drawing.
PROGRESS_CLUSTERS = 4096
PROGRESS_BYTES = 4 << 20

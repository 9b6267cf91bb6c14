"""The one rule for blob names that become file paths (I/O-free).

The spec allows any 1..255 bytes of UTF-8 without NUL as a blob name (section
14).  This implementation writes only the *path-safe* subset of those, so that
every blob it stores can be exported to a directory (``nvbox export``) and
shown by the mount as a file of the same name:

- components are separated by ``/``;
- no component is empty (so no leading ``/``, no trailing ``/``, no ``//``);
- no component is ``.`` or ``..``.

``put``, ``import`` and ``Image.put`` refuse other names with ``blob.name``.
Reading, listing and deleting accept every name the spec allows, so an image
written by another implementation stays usable; ``export`` reports the blobs
whose names are not path-safe and writes the others.
"""

from __future__ import annotations

from . import _format as fmt
from .errors import raise_code

__all__ = ["MAX_NAME", "check_name", "check_path_safe", "path_problem", "path_parts"]

# The spec's own rule (section 14), public here for code above the library
# (the live servers) that must not reach into the format module.
MAX_NAME = fmt.MAX_NAME
check_name = fmt.check_name


def path_problem(name: str) -> str | None:
    """Why ``name`` (already a valid spec name) is not path-safe, or None."""
    for part in name.split("/"):
        if part == "":
            return "it has an empty component (a leading, trailing or doubled '/')"
        if part in (".", ".."):
            return f"it has a {part!r} component"
    return None


def check_path_safe(name, code: str = "blob.name") -> str:
    """The spec's name rule plus the path-safe subset; returns the name as str."""
    name = fmt.check_name(name, code)
    problem = path_problem(name)
    if problem is not None:
        raise_code(code, f"{name!r} is not a path-safe blob name: {problem}")
    return name


def path_parts(name: str) -> list[str]:
    """The path components of a path-safe name (``blob.name`` for the rest)."""
    return check_path_safe(name).split("/")

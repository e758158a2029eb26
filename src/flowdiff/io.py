"""Safe file writing: nothing a user saved is ever half-written.

Every file the library writes goes through :func:`atomic_write`: the content goes to a temporary
file in the same folder, is flushed to disk, and only then renamed over the target, so a crash
or ``SIGKILL`` leaves either the old file or the new one, never a torn one. On POSIX the folder
is flushed after the rename too: the rename is a change of the folder, which a power loss could
otherwise undo after the caller was told the file was saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "read_json", "write_json"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file 0600, and some writers (safetensors) replace it with a new
        # 0600 file: give the result the permissions an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; a no-op off POSIX, where a folder
    cannot be opened to be flushed."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, raising ``ValueError`` that names the file if it is missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not valid JSON: {err}") from err

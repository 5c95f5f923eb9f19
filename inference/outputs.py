"""Every file a command writes: checked writable before any work, written to a temp file in the
same folder, fsynced and renamed (a reader sees the old file or the new, never half of one),
stale temp files of a killed write removed on the next one; JSON never holds NaN."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the mode a plain open() would give a new file is 0o666 & ~umask


def check_output_file(path: Path | str, what: str = "output") -> Path:
    """``path`` if a file can be written there (its folder exists and is writable, and it is
    not a folder itself); else one clear ValueError."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"{what} needs a file name, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a file name inside it")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: its folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is not writable")
    return path


def check_output_folder(path: Path | str, what: str = "output folder") -> Path:
    """``path`` if files can be written into it: an existing writable folder, or a new one
    whose nearest existing parent is a writable folder; else one clear ValueError."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"{what} needs a folder name, got {str(path)!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {existing} is not a writable folder")
    return path


def _temp_files(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def remove_stale_temp_files(path: Path | str) -> None:
    """Delete temp files of writes to ``path`` that a hard kill cut short."""
    for tmp in _temp_files(Path(path)):
        tmp.unlink(missing_ok=True)


def write_atomic_path(path: Path | str, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` writes a temp file in the same folder (for
    writers that take a file name, such as netCDF), which is fsynced and renamed over
    ``path``; earlier writes' stale temp files are removed first. The file gets the mode of the
    one it replaces, else that of a plain new file (not the temp file's private 0600)."""
    path = Path(path)
    remove_stale_temp_files(path)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_UMASK
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """:func:`write_atomic_path` for writers of an open binary file: ``write(f)``."""
    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    write_atomic_path(path, to_file)


def write_text(path: Path | str, text: str) -> None:
    """:func:`write_atomic` of a text file (UTF-8)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats (NaN, inf) -> None, numpy scalars and
    arrays -> Python, mapping keys -> str, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path | str, value: Any) -> None:
    """:func:`write_text` of ``value`` as indented, strict JSON (non-finite floats as null)."""
    write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")

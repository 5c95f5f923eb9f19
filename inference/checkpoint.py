"""Atomic checkpoints: written to a temp file and renamed, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of writes to ``path`` that a hard kill cut short."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable pyro-implicit checkpoint: {err}") from err
    if not isinstance(state, dict) or "model" not in state or "guide" not in state:
        raise ValueError(f"{path} is not a pyro-implicit checkpoint (missing model/guide state)")
    return state

"""Checkpoints: written atomically (:mod:`.outputs`), loaded with ``weights_only=True``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .outputs import write_atomic


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new, never half."""
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (tensors and plain containers only); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # not torch.save's format at all
            raise ValueError(f"{path} is not a readable pyro-implicit checkpoint (not written "
                             "by torch.save)") from err
        raise ValueError(f"{path} is not a trustworthy pyro-implicit checkpoint: it holds "
                         "objects other than tensors and plain containers, which are never "
                         "loaded (they could run code)") from err
    except Exception as err:
        raise ValueError(f"{path} is not a readable pyro-implicit checkpoint (truncated or "
                         f"not written by torch.save): {type(err).__name__}") from err
    if not isinstance(state, dict) or "model" not in state or "guide" not in state:
        raise ValueError(f"{path} is not a pyro-implicit checkpoint (missing model/guide state)")
    return state

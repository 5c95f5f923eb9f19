"""The C++ sweep of the fused hypernetwork update (``csrc/fused_sgd.cpp``), built on first use
by torch's extension builder (25-100 s, announced on stderr, then cached). It reads and writes
theta and its momentum once each, the least an SGD step can do; without a C++ compiler, or with
``PYRO_IMPLICIT_NO_NATIVE=1``, the slower pure-torch chunk loop of :mod:`.generation` runs
instead.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

DISABLE = "PYRO_IMPLICIT_NO_NATIVE"
NAME = "pyro_implicit_fused_sgd"
SOURCE = Path(__file__).parent / "csrc" / "fused_sgd.cpp"
CUDA_HOME_NOTICE = "No CUDA runtime is found"  # logged by torch's builder at import, sans CUDA


def _not_cuda_home_notice(record: logging.LogRecord) -> bool:
    """A logging filter passing every record but torch's CUDA_HOME notice: noise on a machine
    without CUDA, for an extension that is CPU-only."""
    return not record.getMessage().startswith(CUDA_HOME_NOTICE)


def _cpp_extension() -> types.ModuleType:
    """``torch.utils.cpp_extension``, imported without the CUDA_HOME notice its import logs on
    a machine without a CUDA runtime (only that record of that logger is dropped)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    logger.addFilter(_not_cuda_home_notice)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        logger.removeFilter(_not_cuda_home_notice)
    return cpp_extension


def _is_cached(library: Path) -> bool:
    """Whether torch's cache holds ``library`` built from the current source, so that ``load``
    only links it (its ninja build finds nothing to do) instead of compiling."""
    return library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime


@cache
def fused_sgd_kernel() -> Callable | None:
    """``fused_sgd(theta, momentum, g, h, lr, momentum_factor, dampening, weight_decay,
    nesterov, first) -> theta^T g``, or None when it is disabled or cannot be built. A first
    build says so on stderr: it takes a minute, silent otherwise."""
    if os.environ.get(DISABLE, "") not in ("", "0"):
        return None
    try:
        cpp_extension = _cpp_extension()
        build = Path(cpp_extension._get_build_directory(NAME, verbose=False))
        if not _is_cached(build / f"{NAME}{cpp_extension.LIB_EXT}"):
            print(f"pyro-implicit: compiling the fused SGD extension once (about a minute; "
                  f"cached in {build})", file=sys.stderr, flush=True)
        module = cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=["-O3"], verbose=False)
    except Exception as error:  # no compiler or ninja, a failed build: all mean the same here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(f"pyro_implicit: the C++ fused SGD sweep could not be built "
                      f"({type(error).__name__}: {first_line}); the pure-torch loop runs instead "
                      f"(set {DISABLE}=1 to skip the attempt)", RuntimeWarning, stacklevel=2)
        return None
    return module.fused_sgd

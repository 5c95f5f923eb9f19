"""The C++ sweep of the fused hypernetwork update (``csrc/fused_sgd.cpp``), built on first use
by torch's extension builder (about 25 s, then cached). It reads and writes theta and its
momentum once each, the least an SGD step can do; without a C++ compiler, or with
``PYRO_IMPLICIT_NO_NATIVE=1``, the slower pure-torch chunk loop of :mod:`.hypernet` runs instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

DISABLE = "PYRO_IMPLICIT_NO_NATIVE"
SOURCE = Path(__file__).parent / "csrc" / "fused_sgd.cpp"


@cache
def fused_sgd_kernel() -> Callable | None:
    """``fused_sgd(theta, momentum, g, h, lr, momentum_factor, dampening, weight_decay,
    nesterov, first) -> theta^T g``, or None when it is disabled or cannot be built."""
    if os.environ.get(DISABLE, "") not in ("", "0"):
        return None
    try:
        from torch.utils.cpp_extension import load

        module = load("pyro_implicit_fused_sgd", [str(SOURCE)], extra_cflags=["-O3"],
                      verbose=False)
    except Exception as error:  # no compiler or ninja, a failed build: all mean the same here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(f"pyro_implicit: the C++ fused SGD sweep could not be built "
                      f"({type(error).__name__}: {first_line}); the pure-torch loop runs instead "
                      f"(set {DISABLE}=1 to skip the attempt)", RuntimeWarning, stacklevel=2)
        return None
    return module.fused_sgd

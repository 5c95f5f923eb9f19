"""The inference module: methods behind one fit/evaluate interface, training loop, CLI.

Attributes load lazily, so that ``python -m pyro_implicit.inference`` (torchrun's entry point)
and ``python -m pyro_implicit.inference.cli`` do not import the command line twice.
"""

from importlib import import_module

_EXPORTS = {
    "METHODS": "methods", "build": "methods", "validate": "methods", "TrainConfig": "config",
    "evaluate": "evaluate", "evaluate_run": "evaluate",
    "fit": "train", "load_run": "runs", "prepare": "runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

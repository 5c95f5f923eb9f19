"""The inference module: methods behind one fit/evaluate interface, training loop, CLI."""

from .config import TrainConfig
from .evaluate import evaluate, evaluate_run
from .methods import METHODS, build
from .train import fit, load_run, prepare

__all__ = ["METHODS", "TrainConfig", "build", "evaluate", "evaluate_run", "fit", "load_run",
           "prepare"]

"""Property-based tests over CLI configuration inputs: a clean exit or one clear error line,
never a traceback from deep inside torch, never a partially written run folder."""

import itertools
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_imagefolder
from pyro_implicit.inference.cli import main

# flag -> (valid values, invalid values); each example breaks at most one flag
FLAGS = {
    "--model": (["wrn-10-1", "wrn-10-2"], ["wrn-15-2", "wrn-16-0", "wrn-4-1", "vgg", ""]),
    "--method": (["hypernet", "map"], ["mcmc", "", "MAP"]),
    "--strategy": (["all-in-one", "block-wise", "layer-wise"], ["layerwise", "all"]),
    "--prior": (["normal", "uniform", "uniform01", "halfnormal", "bernoulli"], ["gauss", "Normal"]),
    "--epochs": (["1", "2"], ["0", "-1", "x", "1.5", ""]),
    "--batch-size": (["3", "8", "64"], ["0", "-2", "many"]),
    "--z-dim": (["1", "4"], ["0", "-4", "2.5"]),
    "--train-subset": (["3", "9", "12"], ["0", "2", "15", "1e9", "y"]),
    "--lr": (["0.05", "0", "1e-3"], ["nan", "inf", "-0.1", "abc"]),
    "--drop-rate": (["0", "0.3"], ["1", "1.5", "-0.2", "nan"]),
    "--weight-decay": (["0", "5e-4"], ["-1", "inf"]),
}
COUNTER = itertools.count()


@st.composite
def train_argv(draw):
    broken = draw(st.sampled_from([None, *FLAGS]))
    argv = []
    for flag, (good, bad) in FLAGS.items():
        argv += [flag, draw(st.sampled_from(bad if flag == broken else good))]
    return broken, argv


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"), train_per_class=4)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=train_argv())
def test_train_inputs_never_crash_or_leave_half_a_run(folder, tmp_path, capsys, case):
    broken, argv = case
    out = tmp_path / f"run{next(COUNTER)}"
    argv = ["train", *argv, "--h-dim", "3", "--data", f"imagefolder:{folder}", "--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse: a usage line and one error line
        code = exit_info.code
    err = capsys.readouterr().err
    if broken is None:
        assert code == 0, err
        assert {p.name for p in out.iterdir()} == {"config.json", "checkpoint.pt", "metrics.json",
                                                   ".lock"}  # the (released) write lock
    else:
        assert code == 2, (broken, argv)
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith(("pyro-implicit: error:", "pyro-implicit train: error:")), err
        assert not out.exists(), sorted(out.iterdir())
    shutil.rmtree(out, ignore_errors=True)

"""Kill-safe, resumable and data-parallel training (subprocesses, as a user would run them)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_imagefolder
from pyro_implicit import ImplicitMAP
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import main

ARGS = ["--model", "wrn-10-1", "--batch-size", "4", "--z-dim", "4", "--h-dim", "4",
        "--epochs", "3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"), train_per_class=100)


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "pyro_implicit.inference.cli", *argv]


def same_state(a, b, exact=True):
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            if exact:
                assert torch.equal(value, b[part][key]), key
            else:
                assert torch.allclose(value.double(), b[part][key].double(), atol=1e-5,
                                      rtol=1e-4), key


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert main(["train", *ARGS, "--data", f"imagefolder:{folder}", "--out", str(out)]) == 0
    return load_checkpoint(out / "checkpoint.pt")


def start_and_signal(folder, out, sig):
    # same environment (thread count) as this process: bit-identity needs the same kernels
    proc = subprocess.Popen(cli("train", *ARGS, "--data", f"imagefolder:{folder}", "--out",
                                str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=out.parent)
    # events, never deadlines: metrics.json appears (atomically) once the first epoch's
    # checkpoint is written; a stop request is honoured after the next step, so a SIGTERM sent
    # now lands inside the second epoch however fast or slow the machine is
    while not (out / "metrics.json").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_bit_identical(folder, straight, tmp_path, sig):
    out = tmp_path / "run"
    code, err = start_and_signal(folder, out, sig)
    state = load_checkpoint(out / "checkpoint.pt")
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert state["epoch"] >= 1 and state["step"] == 0  # the last epoch boundary
    else:
        assert code == 130 and "--resume" in err
        assert state["epoch"] == 1 and 0 < state["step"] < 75  # the exact step it stopped at
    assert main(["train", "--resume", str(out)]) == 0
    assert not list(out.glob(".*.tmp"))  # a write cut short by SIGKILL is cleaned up
    final = load_checkpoint(out / "checkpoint.pt")
    same_state(final, straight)
    assert [h["loss"] for h in final["history"]] == [h["loss"] for h in straight["history"]]
    assert [h["train_error"] for h in final["history"]] == [
        h["train_error"] for h in straight["history"]]


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(folder, tmp_path,
                                                                      monkeypatch, capsys):
    real = ImplicitMAP.loss_and_logits
    calls = []

    def poisoned(self, *args, **kwargs):
        loss, logits = real(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 80 else loss), logits

    monkeypatch.setattr(ImplicitMAP, "loss_and_logits", poisoned)
    out = tmp_path / "run"
    assert main(["train", *ARGS, "--data", f"imagefolder:{folder}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss in epoch 2, step 5 (global step 80)" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def launch(module, *argv, cwd):
    """``torchrun --standalone --nproc_per_node 2 -m MODULE ARGV`` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", module, *argv]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(folder, out, *extra):
    launch("pyro_implicit.inference", "train", *ARGS[:-2], "--epochs", "1", "--batch-size", "8",
           "--data", f"imagefolder:{folder}", "--out", str(out), *extra, cwd=out.parent)
    return load_checkpoint(out / "checkpoint.pt")


@pytest.mark.parametrize("method", ["map", "hypernet"])
def test_two_process_gloo_run_equals_single_process(folder, tmp_path, method):
    common = ["--method", method, "--sync-bn", "--train-subset", "48"]  # a few (6) steps
    single = tmp_path / "single"
    assert main(["train", *ARGS[:-2], "--epochs", "1", "--batch-size", "8", "--data",
                 f"imagefolder:{folder}", "--out", str(single), *common]) == 0
    parallel = torchrun(folder, tmp_path / "ddp", *common)
    reference = load_checkpoint(single / "checkpoint.pt")
    same_state(parallel, reference, exact=False)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"][0][
        "train_error"] == pytest.approx(reference["history"][0]["train_error"])
    if method == "hypernet":  # each rank its own z: no longer the single-process run
        own_z = torchrun(folder, tmp_path / "own_z", *common, "--per-rank-z")
        with pytest.raises(AssertionError):
            same_state(own_z, reference, exact=False)
    else:  # without synchronised BN each rank normalises its half: not the same either
        local_bn = torchrun(folder, tmp_path / "local_bn", "--method", method,
                            "--train-subset", "48")
        with pytest.raises(AssertionError):
            same_state(local_bn, reference, exact=False)


def test_distributed_evaluation_equals_single_process(folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *ARGS[:-2], "--epochs", "1", "--data", f"imagefolder:{folder}",
                 "--out", str(run)]) == 0
    single, parallel = tmp_path / "single.json", tmp_path / "parallel.json"
    assert main(["evaluate", str(run), "--samples", "1,2,4", "--json", str(single)]) == 0
    out = launch("pyro_implicit.inference.cli", "evaluate", str(run), "--samples", "1,2,4",
                 "--json", str(parallel), cwd=tmp_path)
    assert out.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    a, b = json.loads(single.read_text()), json.loads(parallel.read_text())
    assert a["x1_draws"] == b["x1_draws"]
    for n, metrics in a["samples"].items():
        for key, value in metrics.items():
            assert b["samples"][n][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (n, key)


def test_checkpoint_holds_every_rng_state(straight):
    rng = straight["rng"]
    assert set(rng) == {"torch", "data", "cuda", "python", "numpy"}
    assert isinstance(rng["torch"][0], torch.Tensor) and rng["numpy"][0] == "MT19937"


def test_truncated_checkpoint_foreign_run_and_old_version_are_refused(folder, tmp_path,
                                                                      capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS[:-2], "--epochs", "1", "--data", f"imagefolder:{folder}",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    blob = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    assert main(["train", "--resume", str(run)]) == 2
    assert "not a readable pyro-implicit checkpoint" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    assert main(["train", "--resume", str(stranger)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    config["format"] = 999
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(run)]) == 2
    assert "incompatible version (format 999" in capsys.readouterr().err

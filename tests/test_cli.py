import json
import statistics

import pytest
import torch

from conftest import make_imagefolder
from pyro_implicit.inference import checkpoint as ckpt_module
from pyro_implicit.inference import train as train_module
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig

TINY = ["--model", "wrn-10-1", "--batch-size", "8", "--z-dim", "4", "--h-dim", "4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def train(folder, out, *extra, epochs=2):
    argv = ["train", *TINY, "--data", f"imagefolder:{folder}", "--epochs", str(epochs),
            "--out", str(out), *extra]
    assert main(argv) == 0


def test_train_and_evaluate_end_to_end(folder, tmp_path):
    run = tmp_path / "run"
    train(folder, run, "--method", "hypernet", "--strategy", "block-wise", "--prior", "uniform",
          "--train-subset", "30")
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "block-wise" and config["train_subset"] == 30
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and "hypernet.output" in state["guide"]
    assert not list(run.glob("*.tmp"))
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--samples", "1,2,4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["samples"]) == {"1", "2", "4"}
    for metrics in result["samples"].values():
        assert {"error", "nll", "ece", "brier"} <= set(metrics)
        assert 0 <= metrics["error"] <= 1 and 0 <= metrics["ece"] <= 1
    assert len(result["x1_draws"]) == 5
    assert result["samples"]["1"]["error"] == statistics.median(result["x1_draws"])
    assert result["num_test"] == 12


def test_class_balanced_subset_takes_the_first_files_per_class(folder):
    from pyro_implicit.inference.data import load_data

    data = load_data(f"imagefolder:{folder}", train_subset=6)
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    full = load_data(f"imagefolder:{folder}")
    assert torch.equal(data.train_x[:2], full.train_x[:2])
    assert torch.equal(data.train_x[2:4], full.train_x[12:14])


def test_map_draws_are_identical_and_other_data_evaluates(folder, tmp_path):
    run = tmp_path / "map"
    train(folder, run, "--method", "map", epochs=1)
    shifted = make_imagefolder(tmp_path / "shifted", shift=40.0)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--samples", "1,2", "--data", f"imagefolder:{shifted}",
                 "--bn-batches", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(set(result["x1_draws"])) == 1
    assert result["samples"]["1"] == result["samples"]["2"]
    assert result["data"] == f"imagefolder:{shifted}"
    other = make_imagefolder(tmp_path / "other", classes=("x", "y", "z"))
    assert main(["evaluate", str(run), "--data", f"imagefolder:{other}"]) == 2


def test_resumed_run_equals_uninterrupted_run(folder, tmp_path, monkeypatch):
    train(folder, tmp_path / "straight", epochs=3)
    saves = []
    real_save = ckpt_module.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        saves.append(path)
        if len(saves) == 2:  # after epoch 2's checkpoint (config.json follows the first)
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    argv = ["train", *TINY, "--data", f"imagefolder:{folder}", "--epochs", "3",
            "--out", str(tmp_path / "resumed")]
    assert main(argv) == 130
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for part in ("model", "guide"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


@pytest.mark.parametrize("args, words", [
    (["--model", "wrn-15-2"], ["wrn-15-2", "6n+4"]),
    (["--model", "vgg"], ["vgg", "wrn-16-2"]),
    (["--method", "mcmc"], ["mcmc", "hypernet", "map"]),
    (["--strategy", "blockwise"], ["blockwise", "block-wise"]),
    (["--prior", "cauchy"], ["cauchy", "uniform01", "halfnormal"]),
    (["--data", "mnist"], ["mnist", "imagefolder:PATH"]),
    (["--train-subset", "2"], ["--train-subset 2", "classes"]),
    (["--seed", "-1"], ["seed", "-1", "2**32"]),
])
def test_bad_train_inputs_give_one_clear_line(folder, tmp_path, capsys, args, words):
    argv = ["train", *TINY, "--data", f"imagefolder:{folder}", "--out", str(tmp_path / "r"),
            *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-implicit: error:") and err.count("\n") == 1
    for word in words:
        assert word in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_non_positive_numbers_are_refused(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag, "0", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "must be a positive integer, got '0'" in capsys.readouterr().err


def test_bad_folders_and_files(folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", *TINY, "--data", f"imagefolder:{empty}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "no train/ folder" in capsys.readouterr().err
    broken = make_imagefolder(tmp_path / "broken")
    (broken / "train" / "a" / "0003.png").write_bytes(b"not an image")
    assert main(["train", *TINY, "--data", f"imagefolder:{broken}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "0003.png" in capsys.readouterr().err
    assert main(["evaluate", str(empty)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    train(folder, run, epochs=1)
    assert main(["train", *TINY, "--data", f"imagefolder:{folder}", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--lr", "0.5", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "--epochs, --lr would be ignored" in err and str(run) in err
    (run / "checkpoint.pt").write_bytes(b"\x00" * 10)
    assert main(["evaluate", str(run)]) == 2
    assert "not a readable pyro-implicit checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--samples", "0,x"])


def test_tampered_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "guide": {}, "x": Evil()}, path)
    with pytest.raises(ValueError, match="not a trustworthy pyro-implicit checkpoint") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "False" not in str(err.value)


def test_demo_prints_the_comparison_table(tmp_path, capsys):
    from pyro_implicit.inference.cli import demo_runs

    report = tmp_path / "demo.json"
    assert main(["demo", "--model", "wrn-10-1", "--epochs", "1", "--out", str(tmp_path / "runs"),
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    labels = [label for label, _, _ in demo_runs()]
    assert labels[:2] == ["MAP", "paper hypernet N(0,1)"]
    for row in ("MAP", "paper hypernet N(0,1) x1", "paper hypernet N(0,1) x16", "error %",
                "NLL", "ECE"):
        assert row in out
    rows = json.loads(report.read_text())["rows"]
    assert list(rows) == ["MAP"] + [f"{label} x{n}" for label in labels[1:] for n in (1, 16)]
    saved = TrainConfig.load(tmp_path / "runs" / "hypernet-paper" / "config.json")
    assert (saved.prior, saved.z_draws, saved.repulsion) == ("normal", 1, 0.0)
    last = labels[-1]
    beats = rows[f"{last} x16"]["nll"] < rows["MAP"]["nll"]
    assert f"{last} x16 NLL" in out and ("does not beat" in out) != beats


def test_demo_adds_the_best_hypernet_where_the_defaults_leave_the_papers(monkeypatch):
    from pyro_implicit.inference import cli

    labels = [label for label, _, _ in cli.demo_runs()]
    assert labels == ["MAP", "paper hypernet N(0,1)", "best hypernet U(0,1), 4 z per step"]
    monkeypatch.setitem(cli.HYPERNET, "prior", "uniform01")  # as if train's were the paper's
    monkeypatch.setitem(cli.HYPERNET, "z_draws", 4)
    assert [label for label, _, _ in cli.demo_runs()] == ["MAP",
                                                          "paper hypernet U(0,1), 4 z per step"]


def test_missing_cifar10_explains_the_options(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "--download" in err and "imagefolder:PATH" in err


def test_unavailable_device_is_refused(tmp_path, capsys):
    assert main(["train", "--device", "tpu", "--out", str(tmp_path / "r")]) == 2
    assert "tpu" in capsys.readouterr().err


def test_evaluate_device_overrides_the_runs_own(folder, tmp_path, capsys):
    run = tmp_path / "run"
    train(folder, run, epochs=1)
    here, moved = tmp_path / "here.json", tmp_path / "moved.json"
    assert main(["evaluate", str(run), "--samples", "1,2", "--json", str(here)]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda:7"}))
    if not torch.cuda.is_available():  # as if the run had been trained on a GPU
        assert main(["evaluate", str(run)]) == 2
        assert "cuda:7" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--samples", "1,2", "--device", "cpu",
                 "--json", str(moved)]) == 0
    assert json.loads(moved.read_text())["samples"] == json.loads(here.read_text())["samples"]
    assert main(["evaluate", str(run), "--device", "tpu"]) == 2
    assert "tpu" in capsys.readouterr().err

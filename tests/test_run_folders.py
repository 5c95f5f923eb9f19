"""Run folders and outputs never lose, mix or half-write a user's data; bad input anywhere (flags,
config.json, checkpoints, paths) is refused in one line before any work."""

import dataclasses
import fcntl
import json
import os
import stat

import pytest
import torch

from conftest import make_imagefolder
from pyro_implicit.inference import cli as cli_module
from pyro_implicit.inference import train as train_module
from pyro_implicit.inference.checkpoint import load_checkpoint, save_checkpoint
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.data import load_data
from pyro_implicit.inference.images import ImageData
from pyro_implicit.inference.outputs import json_safe, write_atomic, write_json
from pyro_implicit.inference.runs import is_finished, load_run
from pyro_implicit.inference.train import fit
from pyro_implicit.models import register_model
from pyro_implicit.models.wide_resnet import WideResNet

TINY = ["--model", "wrn-10-1", "--batch-size", "8", "--z-dim", "4", "--h-dim", "4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
    """A finished 2-epoch run, copied afresh by each test that damages it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_argv(folder, out)) == 0
    return out


def train_argv(folder, out, *extra, epochs=2):
    return ["train", *TINY, "--data", f"imagefolder:{folder}", "--epochs", str(epochs),
            "--out", str(out), *extra]


def copy_run(run, to):
    to.mkdir()
    for f in run.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def no_work(monkeypatch):
    """Make any training or evaluation fail loudly: the refusal must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the bad input was refused")

    monkeypatch.setattr(train_module, "build_run", forbidden)
    monkeypatch.setattr(cli_module, "evaluate_run", forbidden)


def test_a_folder_we_did_not_create_is_never_written_into(folder, tmp_path, capsys,
                                                           monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "checkpoint.pt").write_bytes(b"my own weights")
    (mine / "metrics.json").write_text("my own metrics")
    no_work(monkeypatch)
    assert main(train_argv(folder, mine)) == 2
    assert "not a run of ours and not empty (checkpoint.pt, metrics.json)" in \
        capsys.readouterr().err
    assert (mine / "checkpoint.pt").read_bytes() == b"my own weights"
    assert sorted(p.name for p in mine.iterdir()) == ["checkpoint.pt", "metrics.json"]
    monkeypatch.chdir(tmp_path)
    assert main(train_argv(folder, "")) == 2
    assert "--out needs a new folder's name, got '.'" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(train_argv(folder, tmp_path / "a-file")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_empty_folder_becomes_a_run_and_a_failed_start_leaves_none(folder, tmp_path,
                                                                      monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(train_argv(folder, empty, epochs=1)) == 0
    assert (empty / "config.json").is_file()

    def fail(*args, **kwargs):
        raise FloatingPointError("non-finite loss in epoch 1, step 1")

    monkeypatch.setattr(train_module, "train_step", fail)
    fresh = tmp_path / "deep" / "fresh"
    assert main(train_argv(folder, fresh)) == 2
    assert not (tmp_path / "deep").exists()  # nor the parent it created


def test_a_second_writer_is_refused_naming_the_holder(folder, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live training process holds it
    os.write(fd, b"4242")
    try:
        assert main(["train", "--resume", str(run)]) == 2
        assert f"{run} is being written by process 4242" in capsys.readouterr().err
    finally:
        os.close(fd)  # the OS releases the lock with the file (and with a dead process)
    assert main(["train", "--resume", str(run)]) == 0


def test_a_checkpoint_of_another_configuration_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 0.05
    (run / "config.json").write_text(json.dumps(config))
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "was trained with another configuration" in err
        assert "lr: 0.1 in the checkpoint, 0.05 in config.json" in err


def test_a_state_dict_mismatch_names_the_keys_and_shapes(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    state = load_checkpoint(run / "checkpoint.pt")
    state["guide"]["hypernet.hidden"] = state["guide"]["hypernet.hidden"][:, :2]
    state["model"]["net.extra"] = torch.zeros(1)
    save_checkpoint(state, run / "checkpoint.pt")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "its model has unexpected net.extra" in err


def test_a_truncated_metrics_file_is_repaired_from_the_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    text = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text(text[: len(text) // 2])
    assert is_finished(run)  # read from the checkpoint meanwhile
    assert main(["train", "--resume", str(run)]) == 0
    assert "did not match the checkpoint; rewritten" in capsys.readouterr().err
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history == load_checkpoint(run / "checkpoint.pt")["history"]


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update(epoch=1), "its history does not list epochs 1..1"),
    (lambda s: s.update(epoch=7), "epoch 7 is not in 0..2"),
    (lambda s: s.update(epoch=1, step=3, history=s["history"][:1],
                        order=torch.zeros(9, dtype=torch.long), partial=[0.0, 0, 0, 0.0]),
     "its data order is not a permutation"),
    (lambda s: s.update(epoch=1, step=3, history=s["history"][:1],
                        order=torch.randperm(36), partial=[float("nan"), 0, 0, 0.0]),
     "its running sums"),
])
def test_a_tampered_position_is_refused_and_never_written(finished, tmp_path, capsys, change,
                                                          words):
    run = copy_run(finished, tmp_path / "run")
    state = load_checkpoint(run / "checkpoint.pt")
    change(state)
    save_checkpoint(state, run / "checkpoint.pt")
    before = (run / "metrics.json").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is inconsistent with its run" in err and words in err
    assert (run / "metrics.json").read_text() == before


def test_json_outputs_are_strict_and_atomic(tmp_path):
    assert json_safe({"a": float("nan"), "b": [float("inf"), 1.5]}) == {"a": None, "b": [None,
                                                                                          1.5]}
    path = tmp_path / "out.json"
    write_json(path, {"loss": float("nan")})
    assert json.loads(path.read_text()) == {"loss": None}

    def half_then_killed(f):
        f.write(b'{"half":')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_killed)
    assert json.loads(path.read_text()) == {"loss": None}  # the old file, whole
    (tmp_path / ".out.json.stale.tmp").write_text("left by a SIGKILL")
    write_json(path, {"ok": 1})
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_outputs_get_a_plain_files_mode_or_keep_the_replaced_ones(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    new = tmp_path / "new.json"
    write_json(new, {"a": 1})
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    write_json(kept, {"b": 2})
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and json.loads(kept.read_text()) == {"b": 2}


def test_a_killed_analyze_keeps_the_earlier_good_posterior(finished, tmp_path, monkeypatch):
    import arviz as az

    from pyro_implicit.inference.analyze import POSTERIOR, analyze_runs

    out = tmp_path / "analysis"
    analyze_runs([finished], out, draws=6, pairs=4, predictive_draws=2, bn_batches=1)
    good = (out / POSTERIOR).read_bytes()

    def killed(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(good[:96])
        raise KeyboardInterrupt

    monkeypatch.setattr(az.InferenceData, "to_netcdf", killed)
    with pytest.raises(KeyboardInterrupt):
        analyze_runs([finished], out, draws=6, pairs=4, predictive_draws=2, bn_batches=1)
    assert (out / POSTERIOR).read_bytes() == good


@pytest.mark.parametrize("where", ["folder", "missing", "read-only"])
def test_output_paths_are_checked_before_any_work(finished, tmp_path, capsys, monkeypatch,
                                                  where):
    no_work(monkeypatch)
    target = {"folder": tmp_path, "missing": tmp_path / "nowhere" / "e.json",
              "read-only": tmp_path / "ro" / "e.json"}[where]
    if where == "read-only":
        target.parent.mkdir()
        target.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.access(target.parent, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is writable")
    assert main(["evaluate", str(finished), "--json", str(target)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["demo", "--json", str(target)]) == 2
    assert "--json" in capsys.readouterr().err


def test_analyze_out_that_is_a_file_is_refused_before_loading(finished, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["analyze", str(finished), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, words", [
    ("z_dim", "16", "z_dim must be an integer, got '16'"),
    ("lr", "0.1", "lr must be a number, got '0.1'"),
    ("milestones", 5, "milestones must be a list of numbers, got 5"),
    ("batch_size", float("nan"), "batch_size must be an integer, got nan"),
    ("z_dim", 16.5, "z_dim must be an integer, got 16.5"),
    ("epochs", float("inf"), "epochs must be an integer, got inf"),
    ("epochs", float("nan"), "epochs must be an integer, got nan"),
    ("epochs", 1e12, "epochs must be an integer, got 1000000000000.0"),
    ("z_dim", 1000000, "z_dim must be an integer in 1..1024"),
    ("epochs", 10**12, "epochs must be an integer in 1..100000"),
])
def test_bad_config_json_values_are_one_line(finished, tmp_path, capsys, key, value, words):
    run = copy_run(finished, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config[key] = value
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_a_config_json_that_is_not_an_object_is_refused(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / "config.json").write_text("[1, 2]")
    assert main(["evaluate", str(run)]) == 2
    assert "must hold a JSON object of config values, got a list" in capsys.readouterr().err


def test_samples_are_bounded_and_keep_our_message(finished, capsys):
    for text, words in (("1000000000", "at most 1024 draws"),
                        ("0,x", "must be a comma-separated list of positive integers")):
        with pytest.raises(SystemExit):
            main(["evaluate", str(finished), "--samples", text])
        err = capsys.readouterr().err
        assert words in err and "invalid" not in err


def test_relative_image_folders_are_stored_resolved(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder.parent)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", f"imagefolder:{folder.name}", "--epochs", "1",
                 "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == f"imagefolder:{folder}"
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--samples", "1"]) == 0


def test_demo_into_a_used_folder_says_what_to_do(tmp_path, capsys):
    (tmp_path / "map").mkdir()
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds map/: choose a new --out" in err and "--resume" not in err


def test_evaluation_images_of_another_size_are_refused(finished, tmp_path, capsys):
    other = make_imagefolder(tmp_path / "small", size=4)
    assert main(["evaluate", str(finished), "--data", f"imagefolder:{other}"]) == 2
    assert "evaluation data images are (3, 4, 4) (C, H, W), the run was trained on (3, 8, 8)" in \
        capsys.readouterr().err


def test_a_users_network_and_data_round_trip_through_a_run_folder(tmp_path):
    def my_net(num_classes: int = 10, in_channels: int = 3):  # no drop_rate, no **kw
        return WideResNet(10, 1, num_classes, in_channels)

    register_model("my-net-for-test", my_net)
    real = load_data("digits", train_subset=50)
    mine = ImageData(real.train_x, real.train_y, real.test_x, real.test_y, real.classes,
                     pad=1, flip=False)
    config = TrainConfig(model="my-net-for-test", method="map", epochs=1, batch_size=16)
    run = fit(config, tmp_path / "run", progress=False, data=mine)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "memory"
    with pytest.raises(ValueError, match="handed to fit.*in memory.*pass the same data"):
        load_run(tmp_path / "run")
    again = load_run(tmp_path / "run", data=mine)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    with pytest.raises(ValueError, match="data= was loaded from 'digits' but config.data is"):
        fit(TrainConfig(model="wrn-10-1", data="cifar10", epochs=1), tmp_path / "other",
            data=real)


def test_runs_written_before_a_knob_existed_resume_with_their_old_behaviour(tmp_path):
    """A knob added later (missing from an old config.json and checkpoint) does not break
    --resume, and takes the value that reproduces the old run, not the new default."""
    from pyro_implicit.inference.config import ADDED_LATER

    out = tmp_path / "run"
    config = TrainConfig(model="wrn-10-1", data="digits", train_subset=64, epochs=2,
                         batch_size=32, method="bayes-hypernet", flow_layers=2, flow_hidden=8,
                         flow_scale_bound=0.0, flow_grad_norm=0.0)
    fit(dataclasses.replace(config, epochs=1), out, progress=False)
    raw = json.loads((out / "config.json").read_text())  # as an older version wrote them
    (out / "config.json").write_text(json.dumps(
        {k: v for k, v in raw.items() if k not in ADDED_LATER} | {"epochs": 2}))
    state = load_checkpoint(out / "checkpoint.pt")
    state["config"] = {k: v for k, v in state["config"].items() if k not in ADDED_LATER}
    state["config"]["epochs"] = 2
    save_checkpoint(state, out / "checkpoint.pt")
    run = fit(None, out, resume=True, progress=False)
    assert run.config.flow_scale_bound == 0.0 and run.config.flow_grad_norm == 0.0
    assert run.config.z_draws == 1  # one z per step, as before --z-draws existed
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    assert TrainConfig().flow_scale_bound == 2.0  # new runs get the new default
    assert TrainConfig().z_draws == 4

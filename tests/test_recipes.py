"""Named recipes, --smoke, the GPU options and the lazy ImageNet loader (all on CPU)."""

import contextlib
import dataclasses
import json
import signal
from collections import Counter

import numpy as np
import pyro
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from conftest import tiny_batch
from pyro_implicit import ImplicitMAP
from pyro_implicit.inference import TrainConfig, prepare
from pyro_implicit.inference import train as train_module
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import _config, build_parser, explicit_flags, main
from pyro_implicit.inference.config import check_precision
from pyro_implicit.inference.data import load_data
from pyro_implicit.inference.folders import FolderData, ImageFiles, train_batches, uint8_batches
from pyro_implicit.inference.methods import build
from pyro_implicit.inference.options import HypernetOptions
from pyro_implicit.inference.recipes import RECIPES, SMOKE_MODELS, get_recipe, hypernet_label
from pyro_implicit.inference.train import fit, make_loss, make_optimizer, train_step


def config_of(*argv: str) -> TrainConfig:
    """The configuration ``pyro-implicit train ARGV`` would train (nothing is loaded)."""
    argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    args.explicit = explicit_flags(argv)
    return _config(args)


def write_imagenet(root, classes=("a", "b", "c"), train=4, val=2, size=(72, 80)):
    """A tiny ImageNet-style folder: train/ and val/ class folders of PNGs larger than 64 px."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 80, (size[1], size[0], 3))
                img[..., c % 3] += 150
                Image.fromarray(img.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_imagenet(tmp_path_factory.mktemp("imagenet"))


# --- every recipe resolves -------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_resolves_to_a_valid_config(name, tmp_path):
    extra = ["--data", f"imagenet:{tmp_path}"] if get_recipe(name).needs_data else []
    config = config_of("--recipe", name, *extra)
    assert config.recipe == name and not config.smoke
    for key, value in RECIPES[name].overrides.items():
        if key != "data" or not extra:
            assert getattr(config, key) == value, key
    smoke = config_of("--recipe", name, "--smoke")
    assert smoke.model == SMOKE_MODELS[config.model.split("-")[0] + "-"]
    assert smoke.data == "digits" and smoke.epochs == 1 and smoke.smoke
    assert smoke.method == config.method and smoke.prior == config.prior
    assert smoke.members == min(config.members, 2)


def test_recipes_carry_the_papers_settings():
    c = {name: config_of("--recipe", name, *(["--data", "imagenet:/x"]
                                            if get_recipe(name).needs_data else []))
         for name in RECIPES}
    cifar = c["paper-wrn28-10-c10"]
    assert (cifar.model, cifar.epochs, cifar.data, cifar.method) == ("wrn-28-10", 800, "cifar10",
                                                                     "hypernet")
    assert (cifar.strategy, cifar.prior, cifar.z_dim, cifar.h_dim) == ("all-in-one",
                                                                       "uniform01", 16, 16)
    assert (cifar.lr, cifar.milestones, cifar.gamma, cifar.weight_decay, cifar.batch_size,
            cifar.momentum, cifar.nesterov) == (0.1, [0.4, 0.6, 0.8], 0.2, 5e-4, 128, 0.9, True)
    assert c["paper-resnext29-8x64d-c10"].epochs == 900
    assert c["paper-pyramidnet110-48-c10"].model == "pyramidnet-110-48"
    assert c["paper-pyramidnet110-48-c10"].epochs == 600
    for prior in ("normal", "uniform", "uniform01", "halfnormal"):
        assert (c[f"paper-wrn28-4-c10-{prior}"].prior, c[f"paper-wrn28-4-c10-{prior}"].epochs
                ) == (prior, 800)
    assert c["paper-wrn28-4-c10-blockwise"].strategy == "block-wise"
    assert c["paper-wrn28-4-c10-layerwise"].strategy == "layer-wise"
    svhn = c["paper-wrn16-4-svhn-uniform01"]
    assert (svhn.model, svhn.data, svhn.prior, svhn.drop_rate, svhn.epochs, svhn.lr,
            svhn.milestones, svhn.gamma) == ("wrn-16-4", "svhn", "uniform01", 0.4, 160, 0.01,
                                             [0.5, 0.75], 0.1)
    assert [svhn.lr_at(e) for e in (0, 79, 80, 119, 120)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001])
    net = c["paper-resnet50-imagenet"]
    assert (net.model, net.epochs, net.batch_size, net.weight_decay, net.data) == (
        "resnet-50", 90, 256, 1e-4, "imagenet:/x")
    assert [net.lr_at(e) for e in (29, 30, 60, 80)] == pytest.approx([0.1, 0.01, 1e-3, 1e-4])
    k10 = c["c10-10k"]
    assert (k10.data, k10.train_subset, k10.model, k10.epochs, k10.batch_size, k10.seed) == (
        "imagefolder:../shared/data/cifar10", 10000, "wrn-16-2", 40, 128, 0)
    for base in ("paper-wrn28-10-c10", "paper-resnext29-8x64d-c10", "paper-pyramidnet110-48-c10",
                 "paper-wrn28-4-c10", "paper-wrn16-4-svhn", "paper-resnet50-imagenet", "c10-10k"):
        assert c[f"{base}-map"].method == "map"
        assert c[f"{base}-ensemble"].method == "ensemble"
        assert c[f"{base}-ensemble"].members == (4 if base == "c10-10k" else 16)
    assert c["paper-wrn28-4-c10-mle-ensemble"].member_method == "mle"


# The paper's "settings per experiment" (../shared/paper.md), table by table: recipe ->
# (network, strategy, p(z), z_dim = h_dim, epochs); None where a schedule is "standard".
PAPER_TABLE = {
    "paper-wrn28-10-c10": ("wrn-28-10", "all-in-one", "uniform01", 16, 800),  # Table I
    "paper-resnext29-8x64d-c10": ("resnext-29-8x64d", "all-in-one", "uniform01", 16, 900),
    "paper-pyramidnet110-48-c10": ("pyramidnet-110-48", "all-in-one", "uniform01", 32, 600),
    "paper-wrn16-4-svhn-uniform01": ("wrn-16-4", "all-in-one", "uniform01", 32, None),  # II
    "paper-wrn16-4-svhn-normal": ("wrn-16-4", "all-in-one", "normal", 32, None),
    "paper-resnet50-imagenet": ("resnet-50", "all-in-one", "uniform01", 32, None),  # III
    **{f"paper-wrn28-4-c10-{p}": ("wrn-28-4", "all-in-one", p, 16, 800)  # IV, V, Fig. 7
       for p in ("normal", "uniform", "uniform01", "halfnormal")},
    "paper-wrn28-4-c10-blockwise": ("wrn-28-4", "block-wise", "normal", 16, 800),  # Fig. 6
    "paper-wrn28-4-c10-layerwise": ("wrn-28-4", "layer-wise", "normal", 16, 800),
    "paper-wrn28-4-c10-blockwise-uniform01": ("wrn-28-4", "block-wise", "uniform01", 16, 800),
    "paper-wrn28-4-c10-layerwise-uniform01": ("wrn-28-4", "layer-wise", "uniform01", 16, 800),
}


def test_every_paper_recipe_matches_the_papers_settings_table():
    hypernets = {name for name, r in RECIPES.items() if name.startswith("paper-")
                 and r.overrides.get("method", "hypernet") == "hypernet"}
    assert hypernets == set(PAPER_TABLE)  # each hypernet recipe is one row of the table
    for name, (model, strategy, prior, size, epochs) in PAPER_TABLE.items():
        c = get_recipe(name).config()
        assert (c.model, c.strategy, c.prior, c.z_dim, c.h_dim) == (
            model, strategy, prior, size, size), name
        if epochs is not None:
            assert c.epochs == epochs, name
        assert get_recipe(name).source.split(" ")[0] in ("Table", "Fig.", "Sec."), name


def test_paper_hypernets_pin_every_knob_whatever_trains_defaults():
    """train --method hypernet's defaults may become a better configuration: every paper-*
    hypernet recipe (and c10-10k's paper reference) states each hypernet knob itself, at one z
    per mini-batch with no schedule and one learning rate."""
    knobs = {f.name for f in dataclasses.fields(HypernetOptions)}
    for name, recipe in RECIPES.items():
        if recipe.overrides.get("method") != "hypernet" or name == "c10-10k-best":
            continue  # c10-10k-best is train's defaults (the next test)
        assert knobs <= set(recipe.overrides), (name, knobs - set(recipe.overrides))
        c = recipe.config()
        assert (c.z_loc, c.z_scale, c.z_draws, c.z_hold, c.z_warmup, c.theta_lr_scale,
                c.repulsion) == (0.0, 1.0, 1, 0, 0, 1.0, 0.0), name


def test_trains_hypernet_defaults_are_the_best_recipe_and_its_c10_10k_seeds():
    """c10-10k-best, the c10-10k driver's hypernet-best-s* and train --method hypernet's
    defaults are one configuration; the paper's reference differs from it."""
    import sys
    from pathlib import Path

    from pyro_implicit.inference.recipes import BEST_HYPERNET, HYPERNET

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import c10_10k

    knobs = [f.name for f in dataclasses.fields(HypernetOptions)]
    default = TrainConfig(method="hypernet")
    best = get_recipe("c10-10k-best").config()
    assert [getattr(best, k) for k in knobs] == [getattr(default, k) for k in knobs] == [
        BEST_HYPERNET[k] for k in knobs]
    assert TrainConfig(**HYPERNET) != default
    for m in range(3):
        c = c10_10k.config_for(f"hypernet-best-s{m}", "digits")
        assert [getattr(c, k) for k in knobs] == [BEST_HYPERNET[k] for k in knobs]
        assert (c.seed, c.epochs, c.method) == (m, 40, "hypernet")


def test_hypernet_labels_name_the_prior_and_the_draws_per_step():
    assert hypernet_label(TrainConfig(method="hypernet", prior="normal", z_draws=1)) == "N(0,1)"
    assert hypernet_label(TrainConfig(method="hypernet")) == "U(0,1), 4 z per step"
    assert hypernet_label(TrainConfig(method="hypernet", z_draws=1, bn_groups=4)
                          ) == "U(0,1), 4 BatchNorm groups"
    assert hypernet_label(TrainConfig(method="hypernet", z_draws=2, z_draw_mode="mixture")
                          ) == "U(0,1), 2 z per step (mixture)"


# --- overrides -------------------------------------------------------------------------------

def test_explicit_flags_override_the_recipe_and_nothing_else():
    recipe = config_of("--recipe", "paper-wrn28-10-c10")
    mine = config_of("--recipe", "paper-wrn28-10-c10", "--epochs", "3")
    assert mine.epochs == 3
    assert {k: v for k, v in vars(mine).items() if k != "epochs"} == {
        k: v for k, v in vars(recipe).items() if k != "epochs"}
    # a flag typed with its default value still overrides (detection does not compare values)
    svhn = config_of("--recipe", "paper-wrn16-4-svhn-normal", "--lr", "0.1", "--drop-rate", "0",
                     "--prior", "normal", "--no-channels-last")
    assert (svhn.lr, svhn.drop_rate, svhn.epochs) == (0.1, 0.0, 160)
    # explicit flags beat --smoke as well
    smoke = config_of("--recipe", "paper-wrn28-10-c10", "--smoke", "--model", "wrn-16-1",
                      "--batch-size", "4")
    assert (smoke.model, smoke.batch_size, smoke.epochs) == ("wrn-16-1", 4, 1)
    assert explicit_flags(["train", "--recipe", "x", "--epochs", "3", "--smoke", "--out", "o"]
                          ) == {"recipe", "epochs", "smoke"}
    assert explicit_flags(["train", "--out", "train"]) == set()


def test_unknown_recipe_and_imagenet_without_data_are_clear(tmp_path, capsys):
    assert main(["train", "--recipe", "paper-wrn28-11-c10", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'paper-wrn28-11-c10'" in err and "c10-10k" in err
    assert main(["train", "--recipe", "paper-resnet50-imagenet", "--out",
                 str(tmp_path / "r")]) == 2
    assert "--data imagenet:PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in RECIPES:
        assert f"\n{name} " in f"\n{out}"
    for source in ("Table I", "Table II", "Table III", "Table IV", "Fig. 6", "Fig. 7"):
        assert source in out


# --- smoke training: one recipe per network family and per data kind ------------------------

@pytest.mark.parametrize("name, extra", [
    ("paper-wrn28-10-c10", []),
    ("paper-resnext29-8x64d-c10-map", []),
    ("paper-pyramidnet110-48-c10", []),
    ("paper-wrn16-4-svhn-uniform01", ["--precision", "bf16"]),
    ("paper-wrn28-4-c10-mle-ensemble", []),
])
def test_recipe_smoke_trains(name, extra, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--recipe", name, "--smoke", "--out", str(out), *extra]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == name and config["smoke"] and config["device"] == (
        "cuda" if torch.cuda.is_available() else "cpu")
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


def test_imagenet_recipe_smoke_trains_and_evaluates_on_a_lazy_folder(imagenet, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "paper-resnet50-imagenet", "--smoke", "--data",
                 f"imagenet:{imagenet}", "--batch-size", "4", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["train_subset"], config["data"]) == (
        "resnet-14-w8", None, f"imagenet:{imagenet}")
    result = tmp_path / "eval.json"
    assert main(["evaluate", str(out), "--samples", "1,2", "--bn-batches", "1", "--json",
                 str(result)]) == 0
    assert json.loads(result.read_text())["num_test"] == 6


def test_c10_10k_smoke_uses_the_given_image_folder(tmp_path):
    from conftest import make_imagefolder

    folder = make_imagefolder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--recipe", "c10-10k-map", "--smoke", "--data",
                 f"imagefolder:{folder}", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["train_subset"], config["method"]) == ("wrn-10-1", None,
                                                                           "map")


# --- data: svhn and imagenet:PATH ------------------------------------------------------------

def test_missing_svhn_and_imagenet_explain_the_options(tmp_path, capsys):
    assert main(["train", "--data", "svhn", "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "SVHN not found" in err and "--download" in err and err.count("\n") == 1
    assert main(["train", "--data", f"imagenet:{tmp_path / 'nowhere'}", "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "ImageNet not found" in err and "val/<class>" in err
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    assert main(["train", "--data", f"imagenet:{tmp_path / 'half'}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "no val/ folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_imagenet_folder_is_lazy_and_its_batches_are_reproducible(imagenet):
    data = load_data(f"imagenet:{imagenet}")
    assert isinstance(data, FolderData) and isinstance(data.train_x, ImageFiles)
    assert len(data.train_x) == 12 and data.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(data.test_x) == 6 and data.classes == ["a", "b", "c"] and data.in_channels == 3
    assert len(load_data(f"imagenet:{imagenet}", train_subset=6).train_x) == 6
    assert len(data.test_x[torch.tensor([0, 5])]) == 2  # a subset stays lazy
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    positions = [torch.arange(0, 5), torch.arange(5, 12)]
    batches = [order[p] for p in positions]
    first = list(train_batches(data.train_x, batches, positions, seed=0, epoch=0, workers=0))
    assert [b.shape for b in first] == [(5, 3, 224, 224), (7, 3, 224, 224)]
    assert first[0].dtype == torch.uint8
    again = list(train_batches(data.train_x, batches, positions, seed=0, epoch=0, workers=2))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # workers: same
    other = list(train_batches(data.train_x, batches, positions, seed=0, epoch=1, workers=0))
    assert not torch.equal(first[0], other[0])  # a new epoch, new crops
    # evaluation batches: resize 256, center crop 224, exactly as torchvision
    from torchvision.transforms.v2 import functional as TF

    val = list(uint8_batches(data.test_x, [0, 4], 4, workers=0))
    assert [len(b) for b in val] == [4, 2]
    img = Image.open(data.test_x.paths[0]).convert("RGB")
    assert torch.equal(val[0][0], TF.pil_to_tensor(TF.center_crop(TF.resize(img, [256]),
                                                                  [224])))


# --- device and precision --------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_is_refused_clearly_without_a_gpu(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err
    assert config_of("--smoke").device == "cpu" and not config_of("--smoke").channels_last


def test_bf16_without_gpu_support_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ValueError, match="bfloat16 support.*V100.*--precision fp32"):
        check_precision("cuda", "bf16")
    assert check_precision("cpu", "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp32, bf16"):
        check_precision("cpu", "fp16")


def test_bf16_autocast_and_channels_last_are_honoured_on_cpu():
    config = TrainConfig(model="wrn-10-1", channels_last=True, precision="bf16")
    run = prepare(config, load_data("digits", train_subset=40))
    assert run.model.net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    dtypes = []
    run.model.net.stage1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x, y = next(iter(run.train_inputs(8))), run.data.train_y[:8]
    loss_fn, optimizer = make_loss(config), make_optimizer(config, run.model, run.guide)
    loss, correct = train_step(run.model, run.guide, loss_fn, optimizer, x, y, precision="bf16")
    assert dtypes == [torch.bfloat16] * config.z_draws  # one forward per z group
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and correct.dtype == torch.long
    train_step(run.model, run.guide, loss_fn, optimizer, x, y)
    assert dtypes[-1] == torch.float32


def test_config_files_without_the_gpu_fields_still_load(tmp_path):
    new = {"precision", "channels_last", "workers", "recipe", "smoke"}
    raw = {k: v for k, v in TrainConfig().__dict__.items() if k not in new}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = TrainConfig.load(tmp_path / "config.json")
    assert (config.precision, config.channels_last, config.recipe) == ("fp32", False, None)


# --- no host-device syncs per step -----------------------------------------------------------

SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy",
         "cpu", "is_nonzero"}


class SyncProbe(TorchFunctionMode):
    """Counts tensor reads that would synchronise host and device on a GPU."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["hypernet", "map", "bbb", "bayes-hypernet"])
def test_a_training_step_reads_nothing_back(method):
    config = TrainConfig(model="wrn-10-1", method=method)
    model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
    optimizer = make_optimizer(config, model, guide)
    loss_fn = make_loss(config)
    x, y = tiny_batch(8)
    train_step(model, guide, loss_fn, optimizer, x, y)  # lazy initialisation
    probe = SyncProbe()
    with pyro.validation_enabled(False), probe:  # as the training loop runs it
        for _ in range(2):
            train_step(model, guide, loss_fn, optimizer, x, y)
    assert not probe.calls, probe.calls


def test_the_loop_reads_losses_back_every_sync_every_steps(tmp_path):
    data = load_data("digits")
    config = TrainConfig(model="wrn-10-1", epochs=1, batch_size=8, z_dim=4, h_dim=4)
    steps = -(-len(data.train_y) // 8)
    probe = SyncProbe()
    with probe:
        fit(config, tmp_path / "run", progress=False, data=data)
    assert steps > 3 * train_module.SYNC_EVERY
    assert sum(probe.calls.values()) < 20, probe.calls  # setup, 4 reads, the epoch's record


def test_non_finite_loss_is_reported_at_its_step_though_read_later(tmp_path, monkeypatch,
                                                                  capsys):
    real, calls = ImplicitMAP.loss_and_logits, []

    def poisoned(self, *args, **kwargs):
        loss, logits = real(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 57 else loss), logits

    monkeypatch.setattr(ImplicitMAP, "loss_and_logits", poisoned)
    out = tmp_path / "run"
    assert main(["train", "--model", "wrn-10-1", "--z-dim", "4", "--h-dim", "4", "--batch-size",
                 "8", "--train-subset", "400", "--epochs", "2", "--out", str(out)]) == 2
    assert "non-finite loss in epoch 2, step 7 (global step 57)" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


@pytest.mark.parametrize("lazy", [False, True])
def test_stop_between_reads_resumes_bit_identical(lazy, imagenet, tmp_path, monkeypatch):
    argv = ["train", "--z-dim", "4", "--h-dim", "4", "--epochs", "2"]
    if lazy:  # 12 images, 3 steps per epoch: stop in epoch 2 after step 1
        argv += ["--model", "resnet-14-w8", "--data", f"imagenet:{imagenet}", "--batch-size",
                 "4", "--workers", "0"]
        checks, stopped = 4, (1, 1)
    else:  # 50 steps per epoch: stop in epoch 2 after step 18, between two reads
        argv += ["--model", "wrn-10-1", "--batch-size", "8", "--train-subset", "400"]
        checks, stopped = 68, (1, 18)
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0

    class StopAfter(dict):  # the stop flag is up at the given check
        def __init__(self):
            super().__init__(signal=None)
            self.left = checks

        def __getitem__(self, key):
            self.left -= 1
            return signal.SIGTERM if self.left == 0 else None

    monkeypatch.setattr(train_module, "_stop_requests",
                        contextlib.contextmanager(lambda: (yield StopAfter())))
    assert main([*argv, "--out", str(tmp_path / "resumed")]) == 130
    state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == stopped
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for part in ("model", "guide"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert [h["train_error"] for h in a["history"]] == [h["train_error"] for h in b["history"]]

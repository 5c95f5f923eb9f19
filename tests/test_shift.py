"""CIFAR-10-C-style corruptions, their cache, the CIFAR-10-C reader, and ``evaluate --shift
--ood`` end to end on a tiny digits run."""

import json

import numpy as np
import pytest
import torch

from pyro_implicit.inference.cli import main
from pyro_implicit.inference.data import load_data
from pyro_implicit.inference.shift import (
    CORRUPTIONS,
    cached_corrupt,
    cifar10c_sets,
    corrupt,
    fit_images,
)

# corruptions whose output depends on the seed (the others are fixed filters)
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform"]


def images(n=3, channels=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("channels,size", [(3, 16), (1, 8)])
def test_every_corruption_keeps_shape_and_dtype_and_changes_images(channels, size):
    x = images(channels=channels, size=size)
    for name in CORRUPTIONS:
        for severity in (1, 3, 5):
            out = corrupt(x, name, severity)
            assert out.shape == x.shape and out.dtype == torch.uint8, name
        assert not torch.equal(corrupt(x, name, 5), x), name


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_are_deterministic_in_the_seed(name):
    x = images()
    assert torch.equal(corrupt(x, name, 4, seed=1), corrupt(x, name, 4, seed=1))
    if name in RANDOM:
        assert not torch.equal(corrupt(x, name, 4, seed=1), corrupt(x, name, 4, seed=2))


def test_severity_grows_and_bad_names_are_refused():
    x = images(n=8, size=32)
    gaps = [(corrupt(x, "gaussian_noise", s).float() - x.float()).abs().mean() for s in (1, 5)]
    assert gaps[0] < gaps[1]
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "rain", 1)
    with pytest.raises(ValueError, match="1..5"):
        corrupt(x, "fog", 6)


def test_cache_is_reused_and_keyed_by_images(tmp_path):
    x = images()
    first = cached_corrupt(x, "snow", 2, seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert torch.equal(cached_corrupt(x, "snow", 2, seed=3, cache_dir=tmp_path), first)
    cached_corrupt(images(seed=1), "snow", 2, seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_cifar10c_reader(tmp_path):
    rng = np.random.default_rng(0)
    stacked = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)  # 5 severities x 2 images
    np.save(tmp_path / "fog.npy", stacked)
    np.save(tmp_path / "labels.npy", np.tile(np.array([3, 7], np.uint8), 5))
    sets = list(cifar10c_sets(tmp_path, severities=[2, 5]))
    assert [(name, s) for name, s, _, _ in sets] == [("fog", 2), ("fog", 5)]
    _, _, x, y = sets[1]
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 7]
    assert torch.equal(x, torch.from_numpy(stacked[8:]).permute(0, 3, 1, 2))
    data = load_data(f"cifar10c:{tmp_path / 'fog.npy'}")
    assert data.test_x.shape == (10, 3, 32, 32) and data.classes[0] == "airplane"


def test_fit_images_makes_rgb_at_the_run_size():
    digits = load_data("digits").test_x[:4]
    out = fit_images(digits, (3, 32, 32))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(fit_images(digits, (1, 8, 8)), digits)


def test_evaluate_shift_and_ood_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the corruption cache goes under ~/.cache
    run, out = tmp_path / "run", tmp_path / "eval.json"
    assert main(["train", "--model", "wrn-10-1", "--method", "hypernet", "--data", "digits",
                 "--epochs", "1", "--z-dim", "4", "--h-dim", "4", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--samples", "1,2", "--bn-batches", "2", "--json",
                 str(out), "--shift", "corruptions", "--shift-corruptions",
                 "gaussian_noise,glass_blur", "--shift-severities", "1,5",
                 "--shift-subset", "100", "--ood", "digits"]) == 0
    result = json.loads(out.read_text())
    assert result["num_shift"] == 100 and result["num_test"] == 450
    for n in ("1", "2"):
        m = result["samples"][n]
        assert {"error", "nll", "ece", "brier", "aleatoric", "epistemic"} <= set(m)
        assert set(m["calibrated"]) == {"temperature", "nll", "ece"}
        assert set(m["selective"]) == {"max_prob", "entropy", "mutual_information"}
        assert set(result["ood"][n]) == {"auroc", "aupr"}
        assert set(result["ood"][n]["auroc"]) == {"max_prob", "entropy", "mutual_information"}
        assert set(result["shift"]["mean"][n]) == {"error", "nll", "ece"}
    assert result["samples"]["1"]["epistemic"] == 0 and result["samples"]["2"]["epistemic"] > 0
    assert result["calibration"] == "train-subset (in-sample)"
    assert set(result["shift"]) == {"gaussian_noise", "glass_blur", "mean"}
    assert set(result["shift"]["glass_blur"]) == {"1", "5"}
    assert result["ood_data"] == "digits" and result["num_ood"] == 450
    assert len(list((tmp_path / ".cache" / "pyro-implicit" / "shift").glob("*.npz"))) == 4
    # the test set is never the calibration set; bad names fail in one line
    assert main(["evaluate", str(run), "--calibration-data", "digits"]) == 2
    assert main(["evaluate", str(run), "--shift", "corruptions",
                 "--shift-corruptions", "rain"]) == 2


def test_shift_subset_is_a_fixed_seeded_subset():
    from pyro_implicit.inference.evaluate import shift_subset_index

    a, b = shift_subset_index(1000, 100, seed=3), shift_subset_index(1000, 100, seed=3)
    assert torch.equal(a, b) and len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(a, a.sort().values) and a.max() < 1000
    assert not torch.equal(a, shift_subset_index(1000, 100, seed=4))
    assert shift_subset_index(1000, None) is None and shift_subset_index(50, 100) is None
    with pytest.raises(ValueError, match="shift_subset"):
        shift_subset_index(1000, 0)

import torch

from pyro_implicit.inference.data import Normalizer, batches, check_data_spec, load_data


def crops(image, size):
    """Every size x size crop of ``image`` and its mirror image."""
    for dy in range(image.shape[1] - size + 1):
        for dx in range(image.shape[2] - size + 1):
            crop = image[:, dy:dy + size, dx:dx + size]
            yield dy, dx, False, crop
            yield dy, dx, True, crop.flip(-1)


def test_augmentation_is_a_padded_crop_or_its_mirror():
    x = torch.randint(0, 256, (64, 3, 6, 6), dtype=torch.uint8)
    norm = Normalizer([0.0] * 3, [1 / 255] * 3, pad=2, flip=True)  # identity normalisation
    out = norm(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).float()
    flips = offsets = 0
    for img, pad_img in zip(out, padded, strict=True):
        matches = [(dy, dx, flip) for dy, dx, flip, crop in crops(pad_img, 6)
                   if torch.equal(img, crop)]
        assert matches, "augmented image is not a crop of the padded image"
        flips += any(f for *_, f in matches)
        offsets += any((dy, dx) != (2, 2) for dy, dx, _ in matches)
    assert 15 < flips < 50 and offsets > 40


def test_normalisation_without_generator_is_deterministic():
    x = torch.full((2, 1, 4, 4), 51, dtype=torch.uint8)
    norm = Normalizer([0.1], [0.2], pad=1, flip=True)
    assert torch.allclose(norm(x), torch.full((2, 1, 4, 4), 0.5))


def test_batches_cover_every_item_once():
    x = torch.arange(10)
    seen = torch.cat([b for b, _ in batches(x, x, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [b.tolist() for b in batches(x, None, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_digits_split_and_subset():
    data = load_data("digits", train_subset=100)
    assert data.train_x.shape == (100, 1, 8, 8) and data.train_x.dtype == torch.uint8
    assert torch.bincount(data.train_y).tolist() == [10] * 10
    assert data.test_x.shape[0] == 450 and data.num_classes == 10
    assert data.pad == 1 and not data.flip
    assert check_data_spec("imagefolder:/x") == "imagefolder:/x"


def test_recalibration_inputs_are_one_fixed_shuffled_pass(tmp_path):
    from conftest import make_imagefolder
    from pyro_implicit.inference import TrainConfig, prepare

    folder = make_imagefolder(tmp_path / "data")  # listed class by class
    run = prepare(TrainConfig(model="wrn-10-1", data=f"imagefolder:{folder}", z_dim=2, h_dim=2))
    first, again = list(run.train_inputs(6)), list(run.train_inputs(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # fixed order
    everything = run.normalizer(run.data.train_x)
    shuffled = torch.cat(first)
    assert shuffled.shape == everything.shape
    key = lambda t: t.flatten(1).sum(1).sort().values  # noqa: E731
    torch.testing.assert_close(key(shuffled), key(everything))  # every item exactly once
    assert not torch.equal(first[0], everything[:6])  # a partial pass is not the first class


def test_training_batches_come_out_channels_last_and_evaluation_batches_contiguous():
    """The random crop gathers pixels channels-last, so training runs on that layout;
    benchmarks/speed.py feeds its steps the same layout."""
    norm = Normalizer([0.5] * 3, [0.25] * 3, pad=4, flip=True)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    train = norm(x, torch.Generator().manual_seed(0))
    assert train.is_contiguous(memory_format=torch.channels_last) and not train.is_contiguous()
    assert norm(x).is_contiguous()

"""Averaging forms: N = 1 is the single-sample network, N = 2 equals a direct computation."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from conftest import tiny_batch, tiny_model
from pyro_implicit.forms import FORMS, WideConv, assemble, check_form, draws_needed, widening_plan


def _draws(guide, count):
    latents = [guide.sample_latent() for _ in range(count)]
    return latents, lambda m: guide.weights(latents[m])


@pytest.mark.parametrize("form", ["parallelizing", "widening"])
@pytest.mark.parametrize("strategy", ["all-in-one", "block-wise", "layer-wise"])
@pytest.mark.parametrize("network", ["wrn-10-1", "resnext-11-2x4d", "pyramidnet-20-24",
                                     "resnet-14-w8"])
def test_one_draw_is_the_single_sample_network(network, form, strategy):
    model, guide = tiny_model(strategy, name=network)
    x, _ = tiny_batch()
    with torch.no_grad():
        for bn in model.net.modules():  # non-trivial statistics, copied into the assembly
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2)
        _, weights = _draws(guide, 1)
        single = model.materialize(weights(0)).eval()(x)
        assembled = assemble(model, weights, 1, form).eval()(x)
    assert torch.equal(assembled, single)


def _block_kernels(model, block, weights, m):
    return {name[len(block) + 1:]: weights(m)[name] for name in model.blocks[block]}


def _trunk(model, x, block_fn):
    """WRN-10-1 forward with ``block_fn(block name, module, input)`` for each residual block."""
    net = model.net
    x = net.stem(x)
    for stage in ("stage1", "stage2", "stage3"):
        for j, block in enumerate(getattr(net, stage)):
            x = block_fn(f"{stage}.{j}", block, x)
    x = F.relu(net.bn(x))
    return net.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@torch.no_grad()
def test_parallelizing_averages_block_copies():
    model, guide = tiny_model("block-wise")
    model.eval()
    x, _ = tiny_batch()
    n = 2
    _, weights = _draws(guide, n)
    expected = _trunk(model, x, lambda name, block, h: torch.stack([
        functional_call(block, _block_kernels(model, name, weights, i), (h,), strict=False)
        for i in range(n)]).mean(0))
    got = assemble(model, weights, n, "parallelizing").eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_widening_is_dense_over_copies_and_averaged_at_the_last_convs():
    model, guide = tiny_model("layer-wise")
    model.eval()
    x, _ = tiny_batch()
    n = 2
    _, weights = _draws(guide, draws_needed("widening", n))
    assembled = assemble(model, weights, n, "widening").eval()
    # per-copy statistics of the widened BN: make them differ between copies
    for name, module in assembled.named_modules():
        if name.endswith("bn2"):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)

    def block_fn(name, block, h):
        k = lambda m: _block_kernels(model, name, weights, m)  # noqa: E731
        bn2 = assembled.get_submodule(f"{name}.bn2")
        c = block.bn2.num_features
        o = F.relu(block.bn1(h))
        if block.shortcut is None:
            identity = h
        else:
            identity = torch.stack([F.conv2d(o, k(i)["shortcut.weight"], stride=2)
                                    for i in range(n)]).mean(0)
        hidden = []
        for j in range(n):
            a = F.conv2d(o, k(j)["conv1.weight"], stride=block.conv1.stride, padding=1)
            sl = slice(j * c, (j + 1) * c)
            a = F.batch_norm(a, bn2.running_mean[sl], bn2.running_var[sl], bn2.weight[sl],
                             bn2.bias[sl], False, 0.0, bn2.eps)
            hidden.append(F.relu(a))
        out = torch.stack([sum(F.conv2d(hidden[j], k(i * n + j)["conv2.weight"], padding=1)
                               for j in range(n)) / n for i in range(n)]).mean(0)
        return out + identity

    torch.testing.assert_close(assembled(x), _trunk(model, x, block_fn), rtol=1e-5, atol=1e-5)


def test_widening_plan_reads_the_block_data_flow():
    model, guide = tiny_model()
    _, weights = _draws(guide, 1)
    net = assemble(model, weights, 1, "parallelizing")  # a copy of each block, kernels in place
    block = net.get_submodule("stage2.0").copies[0]
    plan = widening_plan(block, {"conv1", "conv2", "shortcut"})
    assert plan == {"conv1": (False, False), "bn2": (True, False), "conv2": (True, True),
                    "shortcut": (False, True)}


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("average", [False, True])
def test_wide_conv_equals_loop_over_copy_blocks(groups, average):
    g = torch.Generator().manual_seed(0)
    n_out, n_in, c_out, c_in = 3, 2, 4, 6
    conv = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, groups=groups, bias=False)
    kernels = torch.randn(n_out, n_in, c_out, c_in // groups, 3, 3, generator=g)
    x = torch.randn(2, n_in * c_in, 7, 7, generator=g)
    xs = x.split(c_in, dim=1)
    outs = [sum(F.conv2d(xs[j], kernels[i, j], None, 2, 1, 1, groups) for j in range(n_in)) / n_in
            for i in range(n_out)]
    expected = torch.stack(outs).mean(0) if average else torch.cat(outs, dim=1)
    torch.testing.assert_close(WideConv(conv, kernels, average)(x), expected)


def test_bad_form_and_counts():
    model, guide = tiny_model()
    with pytest.raises(ValueError, match="unknown form 'stacking'.*branching, parallelizing"):
        check_form("stacking")
    with pytest.raises(ValueError, match="branching averages whole networks"):
        assemble(model, lambda m: {}, 2, "branching")
    with pytest.raises(ValueError, match=">= 1, got 0"):
        assemble(model, lambda m: {}, 0, "widening")
    with pytest.raises(ValueError, match="draw 0 has no kernel for.*stage1.0.conv1.weight"):
        assemble(model, lambda m: {}, 1, "widening")
    assert [draws_needed(f, 4) for f in FORMS] == [4, 4, 16]
    assert draws_needed("widening", 1) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pyro_implicit.inference.cli import main

    run = tmp_path_factory.mktemp("forms") / "run"
    assert main(["train", "--model", "wrn-10-1", "--data", "digits", "--train-subset", "40",
                 "--batch-size", "8", "--epochs", "1", "--z-dim", "4", "--h-dim", "4",
                 "--strategy", "layer-wise", "--out", str(run)]) == 0
    return run


def test_evaluate_cli_reports_every_n_for_each_form(tiny_run, tmp_path):
    import json

    from pyro_implicit.inference.cli import main

    results = {}
    for form in FORMS:
        out = tmp_path / f"{form}.json"
        assert main(["evaluate", str(tiny_run), "--samples", "1,2,3", "--form", form,
                     "--bn-batches", "2", "--json", str(out)]) == 0
        results[form] = json.loads(out.read_text())
        assert results[form]["form"] == form
        assert set(results[form]["samples"]) == {"1", "2", "3"}
    # N = 1 is the single network in every form: the same five draws, the same x1
    assert results["widening"]["x1_draws"] == results["branching"]["x1_draws"]
    assert results["parallelizing"]["samples"]["1"] == results["branching"]["samples"]["1"]
    assert results["widening"]["samples"]["2"] != results["parallelizing"]["samples"]["2"]


def test_evaluate_cli_refuses_an_unknown_form(tiny_run, capsys):
    from pyro_implicit.inference.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tiny_run), "--form", "stacking"])
    assert exc.value.code == 2
    assert "unknown form 'stacking'; choose one of: branching, parallelizing, widening" in (
        capsys.readouterr().err)

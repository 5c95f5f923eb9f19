import math

import pytest
import torch

from pyro_implicit import PRIORS, HyperNetworks, group_layers, z_prior
from pyro_implicit.priors import PRIOR_DESCRIPTIONS, prior_quantiles, scalar_prior


@pytest.mark.parametrize("name, low, high, mean, std", [
    ("normal", -math.inf, math.inf, 0.0, 1.0),
    ("uniform", -1.0, 1.0, 0.0, 1 / math.sqrt(3)),
    ("uniform01", 0.0, 1.0, 0.5, 1 / math.sqrt(12)),
    ("halfnormal", 0.0, math.inf, math.sqrt(2 / math.pi), math.sqrt(1 - 2 / math.pi)),
    ("bernoulli", 0.0, 1.0, 0.5, 0.5),
])
def test_priors_have_the_documented_law(name, low, high, mean, std):
    d = z_prior(name, (200, 100))
    assert d.event_shape == (200, 100) and d.batch_shape == ()
    z = d.sample()
    assert z.min() >= low and z.max() <= high
    assert abs(z.mean().item() - mean) < 0.02
    assert abs(z.std().item() - std) < 0.02


def test_bernoulli_draws_corners_of_the_cube_and_its_quantiles_split_at_one_half():
    z = z_prior("bernoulli", (50, 16)).sample()
    assert set(z.unique().tolist()) == {0.0, 1.0}
    u = torch.tensor([0.01, 0.49, 0.51, 0.99], dtype=torch.float64)
    assert prior_quantiles("bernoulli", u).tolist() == [0.0, 0.0, 1.0, 1.0]
    moved = z_prior("bernoulli", (50, 16), loc=-0.25, scale=0.5).sample()
    assert set(moved.unique().tolist()) == {-0.25, 0.25}


def test_onehot_draws_one_anchor_per_row_uniformly_and_its_quantiles_pick_it():
    torch.manual_seed(0)
    d = z_prior("onehot", (4000, 2, 8))
    assert d.event_shape == (4000, 2, 8) and d.batch_shape == ()
    z = d.sample()
    assert set(z.unique().tolist()) == {0.0, 1.0} and (z.sum(-1) == 1).all()
    counts = z.sum((0, 1)) / 8000
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.015)
    assert torch.isclose(d.log_prob(z), torch.tensor(8000 * math.log(1 / 8)))
    # the first uniform of a row picks its anchor: k = floor(8 u)
    u = torch.tensor([[0.01, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
                      [0.99, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.26, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    assert prior_quantiles("onehot", u).argmax(-1).tolist() == [0, 7, 2]
    assert (prior_quantiles("onehot", u).sum(-1) == 1).all()
    moved = z_prior("onehot", (50, 1, 4), loc=-0.25, scale=0.5)
    z = moved.sample()
    assert set(z.unique().tolist()) == {-0.25, 0.25} and ((z > 0).sum(-1) == 1).all()
    # a pmf moved: log p is the anchors' (50 rows of 1/4) less the scale's Jacobian
    expected = 50 * math.log(1 / 4) - 200 * math.log(0.5)
    assert torch.isclose(moved.log_prob(z), torch.tensor(expected))
    with pytest.raises(ValueError, match="whole z row"):
        scalar_prior("onehot")


def test_unknown_prior_lists_choices():
    with pytest.raises(ValueError) as err:
        z_prior("cauchy", (3,))
    assert "cauchy" in str(err.value)
    for name in PRIOR_DESCRIPTIONS:
        assert name in str(err.value)
    assert set(PRIOR_DESCRIPTIONS) == {*PRIORS, "onehot"}


def test_group_layers():
    blocks = {"b1": ["b1.c1", "b1.c2"], "b2": ["b2.c1", "b2.c2", "b2.sc"]}
    assert group_layers(blocks, "all-in-one") == (["all"], [0] * 5)
    assert group_layers(blocks, "block-wise") == (["b1", "b2"], [0, 0, 1, 1, 1])
    assert group_layers(blocks, "layer-wise") == (
        ["b1.c1", "b1.c2", "b2.c1", "b2.c2", "b2.sc"], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="layerwise.*all-in-one, block-wise, layer-wise"):
        group_layers(blocks, "layerwise")


def test_hypernetworks_shapes_init_and_no_bias():
    shapes = [(4, 3, 3, 3), (8, 4, 1, 1)]
    hn = HyperNetworks(shapes, z_dim=5, h_dim=7)
    assert {n: tuple(p.shape) for n, p in hn.named_parameters()} == {
        "hidden": (2, 7, 5), "output": (4 * 27 + 32, 7)}
    he_hidden = math.sqrt(6 / 5)
    he_out = math.sqrt(6 / 7) / 10
    assert hn.hidden.abs().max() <= he_hidden and hn.hidden.abs().max() > 0.8 * he_hidden
    assert hn.output.abs().max() <= he_out and hn.output.abs().max() > 0.8 * he_out
    kernels = hn(torch.randn(2, 5))
    assert [tuple(k.shape) for k in kernels] == shapes
    # no biases: z = 0 gives exactly zero kernels
    assert all(torch.count_nonzero(k) == 0 for k in hn(torch.zeros(2, 5)))


def test_hypernetwork_layers_are_independent_mlps():
    hn = HyperNetworks([(2, 2), (3,)], z_dim=3, h_dim=4)
    z = torch.randn(2, 3)
    out = hn(z)
    for i, k in enumerate(out):
        ref = hn.output_weight(i) @ torch.relu(hn.hidden[i] @ z[i])
        assert torch.allclose(k.flatten(), ref)
    z2 = z.clone()
    z2[1] += 1  # changing layer 1's z leaves layer 0 alone
    assert torch.equal(hn(z2)[0], out[0]) and not torch.equal(hn(z2)[1], out[1])


def test_hypernetwork_rejects_wrong_z_shape():
    hn = HyperNetworks([(2, 2)], z_dim=3, h_dim=4)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        hn(torch.randn(2, 3))



def test_generation_gradients_equal_autograd_reference():
    from pyro_implicit.generation import _Generate

    shapes = [(4, 3, 3, 3), (5, 4, 1, 1), (2, 5, 3, 3)]
    hyper = HyperNetworks(shapes, z_dim=3, h_dim=4).double()
    hidden = torch.rand(3, 4, dtype=torch.double, requires_grad=True)
    output = hyper.output.detach().clone().requires_grad_()
    torch.autograd.gradcheck(lambda o, h: _Generate.apply(o, h, hyper.sizes, hyper),
                             (output, hidden))
    # the module's gradients equal plain autograd through split views
    z = torch.randn(3, 3, dtype=torch.double)
    cot = [torch.randn(s, dtype=torch.double) for s in shapes]
    sum((w * c).sum() for w, c in zip(hyper(z), cot, strict=True)).backward()
    out = hyper.output.detach().clone().requires_grad_()
    hid = hyper.hidden.detach().clone().requires_grad_()
    h = torch.relu(torch.bmm(hid, z.unsqueeze(-1)).squeeze(-1))
    ref = [(w @ v).view(s) for w, v, s in zip(out.split(hyper.sizes), h, shapes, strict=True)]
    sum((w * c).sum() for w, c in zip(ref, cot, strict=True)).backward()
    torch.testing.assert_close(hyper.output.grad, out.grad)
    torch.testing.assert_close(hyper.hidden.grad, hid.grad)


def test_released_gradient_memory_is_reused_and_accumulation_still_sums():
    from pyro_implicit.hypernet import release_grads

    hyper = HyperNetworks([(4, 3, 3, 3), (5, 4, 1, 1)], z_dim=3, h_dim=4)
    zs = [torch.randn(2, 3) for _ in range(3)]

    def backward(z):
        sum(w.square().sum() for w in hyper(z)).backward()

    def fresh(*batch):  # the gradient of the summed losses, from a new module state
        ref = HyperNetworks([(4, 3, 3, 3), (5, 4, 1, 1)], z_dim=3, h_dim=4)
        ref.load_state_dict(hyper.state_dict())
        for z in batch:
            sum(w.square().sum() for w in ref(z)).backward()
        return ref.output.grad

    backward(zs[0])
    first = hyper.output.grad.data_ptr()
    release_grads(torch.nn.Sequential(hyper))  # as train_step, before zero_grad
    assert hyper.output.grad is None
    backward(zs[1])
    assert hyper.output.grad.data_ptr() == first  # the same memory, overwritten
    torch.testing.assert_close(hyper.output.grad, fresh(zs[1]))
    backward(zs[2])  # no release: gradients accumulate as usual
    torch.testing.assert_close(hyper.output.grad, fresh(zs[1], zs[2]))


def test_row_ranges_cover_each_layer_once():
    from pyro_implicit import generation

    rows = generation.MIN_TASK_ROWS
    sizes = [5 * rows, rows - 1, 3 * rows]
    ranges = generation._row_ranges(sizes, threads=4)
    assert [(layer, a, b) for layer, a, b in ranges if layer == 1] == [(1, 0, sizes[1])]
    assert sum(layer == 0 for layer, _, _ in ranges) == 4  # min(threads, size // MIN_TASK_ROWS)
    assert sum(layer == 2 for layer, _, _ in ranges) == 3
    for layer, size in enumerate(sizes):
        own = [(a, b) for i, a, b in ranges if i == layer]
        assert own[0][0] == 0 and own[-1][1] == size
        assert all(b == a2 for (_, b), (a2, _) in zip(own, own[1:], strict=False))
    assert generation._row_ranges(sizes, threads=1) == [(i, 0, s) for i, s in enumerate(sizes)]


@pytest.mark.parametrize("threads", [1, 3])
def test_threaded_generation_equals_one_product_per_layer(monkeypatch, threads):
    """With theta cut into row ranges on a thread pool, kernels and both gradients equal the
    per-layer products (same numbers in a different summation order)."""
    from pyro_implicit import generation

    monkeypatch.setattr(generation, "MIN_TASK_ROWS", 7)  # cut even these small layers
    monkeypatch.setattr(generation, "_threads_for", lambda output: threads)
    shapes = [(4, 3, 3, 3), (2, 5, 1, 1), (8, 2, 3, 3)]  # 108 and 144 rows cut, 10 whole
    hyper = HyperNetworks(shapes, z_dim=3, h_dim=4).double()
    z = torch.randn(3, 3, dtype=torch.double)
    cot = [torch.randn(s, dtype=torch.double) for s in shapes]
    kernels = hyper(z)
    sum((w * c).sum() for w, c in zip(kernels, cot, strict=True)).backward()
    out = hyper.output.detach().clone().requires_grad_()
    hid = hyper.hidden.detach().clone().requires_grad_()
    h = torch.relu(torch.bmm(hid, z.unsqueeze(-1)).squeeze(-1))
    ref = [(w @ v).view(s) for w, v, s in zip(out.split(hyper.sizes), h, shapes, strict=True)]
    sum((w * c).sum() for w, c in zip(ref, cot, strict=True)).backward()
    for k, r in zip(kernels, ref, strict=True):
        torch.testing.assert_close(k, r)
    torch.testing.assert_close(hyper.output.grad, out.grad)
    torch.testing.assert_close(hyper.hidden.grad, hid.grad)
    if threads > 1:
        assert generation._pool is not None and generation._pool[0] == threads
        torch.autograd.gradcheck(
            lambda o, v: generation._Generate.apply(o, v, hyper.sizes, hyper),
            (out.detach().requires_grad_(), torch.rand(3, 4, dtype=torch.double,
                                                       requires_grad=True)))


@pytest.mark.parametrize("backend", ["native-1", "native-3", "torch-1", "torch-3"])
@pytest.mark.parametrize("options", [
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.0),
    dict(momentum=0.0, weight_decay=1e-3),
])
def test_fused_sgd_backward_equals_optimizer_step(monkeypatch, backend, options):
    """With fuse_sgd the backward updates theta itself, in the C++ sweep or chunk by chunk in
    torch, on 1 or 3 threads: theta, its momentum and the hidden layers after three steps
    equal those of SGD(fused=True).step on the gradient."""
    from pyro_implicit import generation, native

    if backend.startswith("native"):
        if native.fused_sgd_kernel() is None:
            pytest.skip("the C++ sweep cannot be built here")
    else:
        monkeypatch.setattr(generation, "fused_sgd_kernel", lambda: None)
    threads = int(backend[-1])
    calls = []
    kernel = generation.fused_sgd_kernel()
    if kernel is not None:  # count its calls: the native backend must be the one running
        monkeypatch.setattr(generation, "fused_sgd_kernel",
                            lambda: lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(generation, "MIN_TASK_ROWS", 7)
    monkeypatch.setattr(generation, "CHUNK_ROWS", 5)  # ranges cut into chunks with a ragged end
    monkeypatch.setattr(generation, "_threads_for", lambda output: threads)
    shapes = [(4, 3, 3, 3), (2, 5, 1, 1), (8, 2, 3, 3)]
    torch.manual_seed(0)
    plain = HyperNetworks(shapes, z_dim=3, h_dim=4).double()
    fused = HyperNetworks(shapes, z_dim=3, h_dim=4).double()
    fused.load_state_dict(plain.state_dict())
    optimizers = [torch.optim.SGD(h.parameters(), lr=0.1, fused=True, **options)
                  for h in (plain, fused)]
    fused.fuse_sgd(optimizers[1])
    for _ in range(3):
        z = torch.randn(3, 3, dtype=torch.double)
        cot = [torch.randn(s, dtype=torch.double) for s in shapes]
        for h, opt in zip((plain, fused), optimizers, strict=True):
            opt.zero_grad(set_to_none=True)
            sum((w * c).sum() for w, c in zip(h(z), cot, strict=True)).backward()
            if h is fused:
                assert h.output.grad is None and h.hidden.grad is not None
            opt.step()
        torch.testing.assert_close(fused.output, plain.output, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fused.hidden, plain.hidden, rtol=1e-12, atol=1e-14)
    if options["momentum"]:
        buffers = [opt.state_dict()["state"][1]["momentum_buffer"] for opt in optimizers]
        torch.testing.assert_close(buffers[1], buffers[0], rtol=1e-12, atol=1e-14)
    else:
        assert "momentum_buffer" not in optimizers[1].state[fused.output]
    ranges = len(generation._row_ranges(fused.sizes, threads))
    assert len(calls) == (3 * ranges if backend.startswith("native") else 0)  # per range, step


def test_fuse_sgd_rejects_what_it_cannot_fuse_and_copies_do_not_fuse():
    import copy
    import pickle

    hyper = HyperNetworks([(4, 3, 3, 3)], z_dim=3, h_dim=4)
    with pytest.raises(TypeError, match="torch.optim.SGD, got Adam"):
        hyper.fuse_sgd(torch.optim.Adam(hyper.parameters()))
    with pytest.raises(ValueError, match="does not update this module's output"):
        hyper.fuse_sgd(torch.optim.SGD([hyper.hidden], lr=0.1))
    with pytest.raises(ValueError, match="maximize"):
        hyper.fuse_sgd(torch.optim.SGD(hyper.parameters(), lr=0.1, maximize=True))
    optimizer = torch.optim.SGD(hyper.parameters(), lr=0.1, momentum=0.9)
    hyper.fuse_sgd(optimizer)
    assert hyper.fused_sgd_group() == (optimizer, optimizer.param_groups[0])
    for twin in (copy.deepcopy(hyper), pickle.loads(pickle.dumps(hyper))):
        assert twin.fused_sgd_group() is None  # not in the optimiser: ordinary gradients
        twin(torch.randn(1, 3))[0].sum().backward()
        assert twin.output.grad is not None
    before = hyper.output.detach().clone()
    hyper(torch.randn(1, 3))[0].sum().backward()
    assert hyper.output.grad is None and not torch.equal(hyper.output, before)
    hyper.fuse_sgd(None)
    assert hyper.fused_sgd_group() is None
    del optimizer  # only a weak reference is held
    hyper.fuse_sgd(torch.optim.SGD(hyper.parameters(), lr=0.1))
    import gc
    gc.collect()
    assert hyper.fused_sgd_group() is None


def test_native_sweep_falls_back_with_a_warning_or_when_disabled(monkeypatch):
    from torch.utils import cpp_extension

    from pyro_implicit import native

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    native.fused_sgd_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="Ninja is required.*pure-torch loop"):
            assert native.fused_sgd_kernel() is None
        native.fused_sgd_kernel.cache_clear()
        monkeypatch.setenv(native.DISABLE, "1")
        assert native.fused_sgd_kernel() is None  # no attempt, no warning
    finally:
        native.fused_sgd_kernel.cache_clear()

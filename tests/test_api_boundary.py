"""The data boundary of the Python API: one clear error for each input mistake, at the model,
the guide and the loss, and nothing refused that was accepted before."""

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_batch, tiny_model
from pyro_implicit import (
    BayesianNetwork,
    ImplicitGuide,
    ImplicitMAP,
    PointGuide,
    freeze_posterior,
    model_average,
)
from pyro_implicit.models import create_model

X, Y = tiny_batch()

BAD_INPUTS = {
    "channels": ((X[:, :1], Y), ValueError,
                 r"x has 1 input channel\(s\) .*first conv 'stem' takes 3"),
    "uint8": (((X * 50).to(torch.uint8), Y), TypeError,
              r"x has dtype torch.uint8, the network needs floating-point.*x.float\(\) / 255"),
    "numpy x": ((X.numpy(), Y), TypeError, r"x must be a torch.Tensor, got ndarray.*as_tensor"),
    "empty": ((X[:0], Y[:0]), ValueError, r"x is an empty batch \(shape \(0, 3, 8, 8\)\)"),
    "3-D x": ((X[0], Y), ValueError, r"got shape \(3, 8, 8\): add the batch dimension"),
    "float y": ((X, Y.float()), TypeError, r"y has dtype torch.float32.*y.long\(\)"),
    "short y": ((X, Y[:5]), ValueError, r"y has 5 labels but x has 8 images"),
    "one-hot y": ((X, F.one_hot(Y, 5)), ValueError, r"y must be 1-D.*\(8, 5\).*argmax"),
    "numpy y": ((X, Y.numpy()), TypeError, r"y must be a torch.Tensor.*torch.as_tensor\(y\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("loss", [ImplicitMAP(), ImplicitMAP(draws=2)], ids=["one", "groups"])
def test_the_loss_names_each_input_mistake(case, loss):
    model, guide = tiny_model()
    args, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message) as info:
        loss(model, guide, *args)
    assert "Trace Shapes" not in str(info.value)  # raised before Pyro's trace, no shape dump


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_the_model_and_its_logits_name_each_input_mistake(case):
    model, guide = tiny_model()
    args, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        model(*args)
    if case in ("channels", "uint8", "numpy x", "empty", "3-D x"):
        with pytest.raises(error, match=message):
            model.logits(args[0], guide.weights(guide.sample_latent()))


def test_inputs_are_checked_by_shape_and_dtype_only():
    model, _ = tiny_model()
    meta = {"device": "meta"}  # no values: reading one would fail
    model.check_inputs(torch.empty(8, 3, 8, 8, **meta), torch.empty(8, dtype=torch.long, **meta))


@pytest.mark.parametrize("labels", [Y.int(), Y.bool(), Y.to(torch.uint8)], ids=str)
def test_the_losses_still_accept_integer_and_bool_labels_and_keywords(labels):
    model, guide = tiny_model()
    assert torch.isfinite(ImplicitMAP()(model, guide, X, labels))
    assert torch.isfinite(ImplicitMAP()(model, guide, X.to(memory_format=torch.channels_last),
                                        y=labels))


@pytest.mark.parametrize("generated, error, message", [
    ({"stage1.0": ["stage1.0.conv3.weight"]}, AttributeError,
     r"names 'stage1.0.conv3.weight', which is not a parameter of WideResNet; closest: "
     r"'stage1.0.conv2.weight', 'stage1.0.conv1.weight'"),
    ({"stage1.O": ["stage1.0.conv1.weight"]}, ValueError,
     r"block 'stage1.O', which is neither a module of WideResNet nor one of its "
     r"residual_blocks\(\); closest: 'stage1.0'"),
    ({"stage1.0": ["stage1.0.conv1.weight"], "stage2.0": ["stage1.0.conv1.weight"]}, ValueError,
     r"lists kernel 'stage1.0.conv1.weight' twice, in blocks 'stage1.0' and 'stage2.0'"),
    ({"stage1.0": ["stage2.0.conv1.weight"]}, ValueError,
     r"'stage2.0.conv1.weight', which is not inside the module 'stage1.0'"),
    ({"stage1.0": "stage1.0.conv1.weight"}, TypeError, r"must be a list of parameter names"),
], ids=["parameter typo", "block typo", "kernel in two blocks", "kernel outside", "str"])
def test_generated_mistakes_name_the_closest_names(generated, error, message):
    net = create_model("wrn-10-1")
    with pytest.raises(error, match=message):
        BayesianNetwork(net, 10, generated=generated)
    assert "stage1.0.conv1.weight" in dict(net.named_parameters())  # nothing taken over


def test_generated_accepts_module_blocks_and_declared_labels():
    net = create_model("wrn-10-1")
    model = BayesianNetwork(net, 10, generated={"stage1": ["stage1.0.conv1.weight"],
                                                "": ["fc.weight"]})
    assert [s.block for s in model.sites] == ["stage1", ""]


def test_implicit_guide_needs_the_bayesian_network():
    with pytest.raises(TypeError, match=r"needs the Pyro model, a BayesianNetwork, got "
                                        r"WideResNet: .*BayesianNetwork\(net, num_data\)"):
        ImplicitGuide(create_model("wrn-10-1"))


@pytest.mark.parametrize("model_name, guide_name, message", [
    ("wrn-10-1", "wrn-16-1", r"it samples 6 site\(s\) the model lacks \('stage1.1.conv1.weight'"),
    ("wrn-16-1", "wrn-10-1", r"it leaves 6 of the model's site\(s\) to the prior "
                             r"\('stage1.1.conv1.weight'"),
    ("wrn-10-1", "wrn-10-2", r"site 'stage1.0.conv1.weight' got a value of shape "
                             r"\(32, 16, 3, 3\), but this model's site has shape \(16, 16, 3, 3\)"),
])
def test_a_guide_built_for_another_model_is_refused(model_name, guide_name, message):
    model, _ = tiny_model(name=model_name)
    _, guide = tiny_model(name=guide_name)
    with pytest.raises(ValueError, match=message) as info:
        ImplicitMAP()(model, guide, X, Y)
    assert "built for another model" in str(info.value)
    assert "Trace Shapes" not in str(info.value)


def test_a_point_guide_on_a_model_with_generated_sites_is_refused():
    model, _ = tiny_model()
    with pytest.raises(ValueError, match=r"leaves 8 of the model's site\(s\) to the prior"):
        ImplicitMAP()(model, PointGuide(), X, Y)


def test_a_posterior_of_another_model_is_refused_when_averaging():
    model, _ = tiny_model()
    other, guide = tiny_model(name="wrn-10-2")
    frozen = freeze_posterior(other, guide, 2)
    with pytest.raises(ValueError, match=r"site 'stage1.0.conv1.weight' got a value of shape"):
        model_average(model, frozen, X)

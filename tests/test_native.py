"""The native extension's first build announces itself once, a cached load stays silent, and
importing torch's extension builder does not print its CUDA_HOME notice. Nothing is compiled:
torch's ``load`` is replaced by a fake that writes the library where torch would."""

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pyro_implicit import native

ANNOUNCEMENT = "pyro-implicit: compiling the fused SGD extension once"


@pytest.fixture
def fresh_kernel():
    """``native.fused_sgd_kernel`` with its per-process cache emptied before and after."""
    native.fused_sgd_kernel.cache_clear()
    yield native.fused_sgd_kernel
    native.fused_sgd_kernel.cache_clear()


def test_first_build_is_announced_once_and_a_cached_load_is_silent(tmp_path, monkeypatch,
                                                                   capfd, fresh_kernel):
    monkeypatch.delenv(native.DISABLE, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    source = tmp_path / "fused_sgd.cpp"
    source.write_text("// the extension's source\n")
    monkeypatch.setattr(native, "SOURCE", source)
    cpp_extension = native._cpp_extension()
    library = Path(cpp_extension._get_build_directory(native.NAME, False)) / (
        native.NAME + cpp_extension.LIB_EXT)
    kernel, built = object(), []

    def fake_load(name, sources, **kwargs):  # what a build leaves in torch's cache
        built.append(name)
        library.touch()
        return SimpleNamespace(fused_sgd=kernel)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert fresh_kernel() is kernel and fresh_kernel() is kernel  # one load per process
    err = capfd.readouterr().err
    assert err.count(ANNOUNCEMENT) == 1 and str(library.parent) in err
    assert native.CUDA_HOME_NOTICE not in err

    fresh_kernel.cache_clear()  # a new process: the library is cached
    assert fresh_kernel() is kernel
    assert ANNOUNCEMENT not in capfd.readouterr().err

    fresh_kernel.cache_clear()  # the source changed since: compiled again
    os.utime(library, (0, 0))
    assert fresh_kernel() is kernel
    assert capfd.readouterr().err.count(ANNOUNCEMENT) == 1
    assert built == [native.NAME] * 3


def test_importing_the_builder_drops_only_its_cuda_home_notice(tmp_path, monkeypatch, capfd):
    """On a machine without a CUDA runtime (forced here) torch logs the notice when the builder
    module runs; native's import drops it, and the logger is left as it was."""
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    original = importlib.import_module("torch.utils.cpp_extension")
    monkeypatch.setattr(torch.utils, "cpp_extension", original)  # restored after the test
    monkeypatch.delitem(sys.modules, "torch.utils.cpp_extension")  # so the import runs it anew
    capfd.readouterr()
    fresh = native._cpp_extension()
    assert fresh is not original and fresh.CUDA_HOME == str(tmp_path)
    assert native.CUDA_HOME_NOTICE not in capfd.readouterr().err
    fresh._find_cuda_home()  # outside the import the notice is logged as usual
    assert native.CUDA_HOME_NOTICE in capfd.readouterr().err

"""Our torch models on CUDA (skipped without a GPU), and a clear error when CUDA is asked for but absent."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from causcell_bench.models.utils import resolve_device
from causcell_bench.testing import tiny_dataset

# (adapter "module:Class", a budget of about one training step, small networks)
MODELS = {
    "CausCell": ("causcell_bench.methods.causcell:CausCell",
                 {"n_steps": 1, "batch_size": 64, "hidden": 32, "n_blocks": 1, "heads": 2, "head_dim": 8, "d": 8,
                  "ff_mult": 2, "ddim_steps": 2, "pool_size": 16}),
    "scDisInFact": ("causcell_bench.methods.scdisinfact:ScDisInFact", {"epochs": 1}),
    "CPA": ("causcell_bench.methods.cpa:CPA", {"epochs": 1, "adv_warmup": 0}),
    "MichiGAN": ("causcell_bench.methods.michigan:MichiGAN", {"vae_epochs": 1, "gan_steps": 1, "gan_batch_size": 32}),
}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


def _method(name: str) -> tuple[type, dict[str, Any]]:
    target, params = MODELS[name]
    module, attr = target.split(":")
    try:
        return getattr(importlib.import_module(module), attr), params
    except (ImportError, AttributeError) as e:
        pytest.skip(f"{name} is not available: {e}")


def _torch_modules(obj: Any, depth: int = 2) -> list[nn.Module]:
    """nn.Modules held by a fitted adapter (directly or one object deeper, e.g. model_.net)."""
    found = []
    for v in vars(obj).values():
        if isinstance(v, nn.Module):
            found.append(v)
        elif depth > 1 and hasattr(v, "__dict__") and not isinstance(v, type):
            found += _torch_modules(v, depth - 1)
    return found


@needs_gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_trains_and_generates_on_cuda(name: str) -> None:
    cls, params = _method(name)
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    torch.cuda.reset_peak_memory_stats()
    m = cls(device="cuda", **params)
    m.fit(adata, spec, seed=0)
    assert torch.cuda.max_memory_allocated() > 0, "nothing was put on the GPU"
    modules = _torch_modules(m)
    assert modules, f"{name} holds no torch module after fit"
    for mod in modules:
        devices = {p.device.type for p in mod.parameters()}
        assert devices <= {"cuda"}, f"{name}: {type(mod).__name__} parameters on {devices}"
    out = m.generate(adata, seed=0)
    assert isinstance(out, np.ndarray) and out.shape == adata.shape and np.isfinite(out).all()
    if cls.capabilities.embedding != "none":
        emb = m.embed(adata)
        assert all(isinstance(e, np.ndarray) and len(e) == adata.n_obs for e in emb.values())


def test_cuda_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is visible.*'auto' or 'cpu'"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("name", list(MODELS))
def test_method_on_cuda_without_gpu_says_so(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking a method for CUDA on a machine without one fails with the device message, not deep in torch."""
    cls, params = _method(name)
    adata, spec = tiny_dataset(n_cells=60, n_genes=20)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):  # BenchError is a ValueError
        cls(device="cuda", **params).fit(adata, spec, seed=0)


@needs_gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_fitted_on_cuda_loads_on_a_cpu_only_machine(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Method.save keeps torch state on the CPU, so a model fitted on a GPU loads (device "auto") where there is none."""
    cls, params = _method(name)
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    m = cls(device="cuda", **params)
    m.fit(adata, spec, seed=0)
    m.save(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = cls.load(tmp_path)
    modules = _torch_modules(loaded)
    assert modules, f"{name} holds no torch module after load"
    for mod in modules:
        devices = {p.device.type for p in mod.parameters()} | {b.device.type for b in mod.buffers()}
        assert devices <= {"cpu"}, f"{name}: {type(mod).__name__} loaded onto {devices}"
    out = loaded.generate(adata, seed=0)
    assert isinstance(out, np.ndarray) and out.shape == adata.shape and np.isfinite(out).all()

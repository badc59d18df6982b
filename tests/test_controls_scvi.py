"""What the controls and the scVI adapter return (the conformance kit runs in test_conformance.py)."""

from __future__ import annotations

import numpy as np

from causcell_bench.methods.base import Method
from causcell_bench.methods.controls import NegativeControl, PositiveControl
from causcell_bench.methods.scvi import SCVI
from causcell_bench.testing import tiny_dataset, tiny_split


def _fitted(cls: type[Method]) -> Method:
    train, _, spec = tiny_split()
    m = cls(preset="test", device="cpu")
    m.fit(train, spec, seed=0)
    return m


def test_positive_control_embeds_the_labels() -> None:
    m = _fitted(PositiveControl)
    adata, _ = tiny_dataset()
    emb = m.embed(adata)
    # one-hot of the label: argmax recovers every label exactly
    assert (emb["age"].argmax(1) == adata.obs["age"].cat.codes.to_numpy()).all()


def test_negative_control_is_unpaired_and_ignores_do() -> None:
    m = _fitted(NegativeControl)
    adata, _ = tiny_dataset()
    gen = m.generate(adata, seed=0)
    x = adata.X.toarray()
    # unpaired: far less similar to its own cell than the data itself
    assert not np.allclose(gen, x)
    # the intervention is ignored: zero predicted effect
    np.testing.assert_array_equal(m.generate(adata, do={"age": "age1"}, seed=0), gen)


def test_scvi_embedding_is_its_latent() -> None:
    m = _fitted(SCVI)
    adata, _ = tiny_dataset()
    emb = m.embed(adata)
    assert emb["age"].shape == (adata.n_obs, m.params["n_latent"])

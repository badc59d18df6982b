"""The saved form of a trained CausCell model: plain containers and tensors, no pickled classes.

:func:`export_state` gives the dict that the benchmark adapter (``CausCell.save`` in
:mod:`causcell_bench.methods.causcell`) stores with ``torch.save`` and reads back with
``torch.load(..., weights_only=True)``; :func:`constructor_arguments` and :func:`import_state`
rebuild a model from it (``CausCellModel.from_state``). Because no class path is stored, moving
classes between modules does not break saved models; renaming a key here, or a parameter or
buffer of the networks, does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

__all__ = ["Persistable", "constructor_arguments", "export_state", "import_state"]


class Persistable(Protocol):
    """What is saved of a model (``CausCellModel`` has all of it)."""

    config: dict[str, Any]
    net: nn.Module
    ema: nn.Module
    n_updates: int
    ema_updates: int
    history: list[dict[str, float]]
    pools: list[list[tuple[torch.Tensor, torch.Tensor]]]


def export_state(model: Persistable) -> dict[str, Any]:
    """Everything needed to rebuild the model (plain containers and tensors only)."""
    return {
        "config": model.config,
        "net": {k: v.cpu() for k, v in model.net.state_dict().items()},
        "ema": {k: v.cpu() for k, v in model.ema.state_dict().items()},
        "n_updates": model.n_updates,
        "ema_updates": model.ema_updates,
        "history": model.history,
        "pools": [[(e.cpu(), z.cpu()) for e, z in per] for per in model.pools],
    }


def constructor_arguments(state: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(positional, keyword) arguments that rebuild the saved model's untrained twin."""
    cfg = dict(state["config"])
    return (cfg.pop("n_genes"), cfg.pop("concept_sizes"), np.asarray(cfg.pop("adjacency"))), cfg


def import_state(model: Persistable, state: Mapping[str, Any]) -> None:
    """Load weights, counters, loss history and donor pools of ``state`` into a freshly built ``model``."""
    model.net.load_state_dict(state["net"])
    model.ema.load_state_dict(state["ema"])
    model.n_updates = int(state["n_updates"])
    # saved before the EMA schedule existed: it was updated at every step
    model.ema_updates = int(state.get("ema_updates", model.n_updates))
    model.history = list(state["history"])
    model.pools = [[(e, z) for e, z in per] for per in state["pools"]]
    model.net.eval()

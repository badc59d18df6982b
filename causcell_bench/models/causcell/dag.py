"""DAG algebra of CausCell: acyclicity checks, topological order, the linear SCM and interventions on it.

The SCM layer of the causal disentanglement module (Gao, Dong et al., Nat Commun 2025, Methods,
"Causal disentanglement module") solves z = A^T z + eps in closed form, z = (I - A^T)^-1 eps, per
feature dimension. :func:`intervene_scm` gives the two counterfactual procedures: graph surgery
(``"do"``, ours) and the authors' swap of exogenous noise (``"exogenous"``); docs/causcell.md
compares them.

Conventions: ``adjacency[parent, child] = 1``; the last node is the unexplained concept u and has
no edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "MODES",
    "check_dag",
    "descendants",
    "intervene_scm",
    "scm_forward",
    "scm_matrix",
    "topological_order",
]

# counterfactual modes: graph surgery on z, or the authors' swap of the exogenous eps
MODES = ("do", "exogenous")


def topological_order(adjacency: np.ndarray) -> list[int]:
    """Node indices with every parent before its children; ValueError on a cycle."""
    a = np.asarray(adjacency) != 0
    n = a.shape[0]
    indeg = a.sum(0).astype(int)
    ready = [j for j in range(n) if indeg[j] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in np.flatnonzero(a[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(int(j))
    if len(order) < n:
        stuck = sorted(set(range(n)) - set(order))
        raise ValueError(
            f"the adjacency matrix is not a DAG: nodes {stuck} lie on or below a cycle; "
            "remove an edge so that no concept is its own ancestor"
        )
    return order


def check_dag(adjacency: Any, n_nodes: int | None = None) -> np.ndarray:
    """Validate a CausCell adjacency matrix and return it as float32.

    It must be square ((m+1) x (m+1) when ``n_nodes`` is given), finite, with
    a zero diagonal, acyclic, and its last node (u) must have no edges.
    """
    a = np.asarray(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"the adjacency matrix must be square, got shape {a.shape}")
    if n_nodes is not None and a.shape[0] != n_nodes:
        raise ValueError(
            f"the adjacency matrix has {a.shape[0]} nodes but the model has {n_nodes} "
            "(m observed concepts + the unexplained node u, last)"
        )
    if not np.isfinite(a).all():
        raise ValueError("the adjacency matrix has non-finite entries")
    if np.any(np.diag(a) != 0):
        loops = np.flatnonzero(np.diag(a)).tolist()
        raise ValueError(f"the adjacency matrix has self-loops at nodes {loops}; a concept cannot cause itself")
    if np.any(a[-1] != 0) or np.any(a[:, -1] != 0):
        raise ValueError("the last node is the unexplained concept u and must have no edges (last row/column zero)")
    topological_order(a)
    return a.astype(np.float32)


def descendants(adjacency: np.ndarray, nodes: Sequence[int]) -> set[int]:
    """All nodes reachable from ``nodes`` (excluding the start nodes unless reachable)."""
    a = np.asarray(adjacency) != 0
    seen: set[int] = set()
    todo = list(nodes)
    while todo:
        for j in np.flatnonzero(a[todo.pop()]):
            if int(j) not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return seen


def scm_matrix(adjacency: np.ndarray) -> np.ndarray:
    """C = (I - A^T)^-1, so that z = C eps solves z = A^T z + eps."""
    a = check_dag(adjacency)
    return np.linalg.inv(np.eye(a.shape[0]) - a.T.astype(np.float64)).astype(np.float32)


def scm_forward(eps: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Linear SCM layer per feature dim: eps (B, m+1, d) -> z (B, m+1, d) with z = C eps."""
    return torch.einsum("ji,bid->bjd", c, eps)


def intervene_scm(
    eps: torch.Tensor,
    donors: Mapping[int, np.ndarray],
    adjacency: np.ndarray,
    c: torch.Tensor,
    mode: str = "do",
) -> torch.Tensor:
    """Counterfactual z (n, m+1, d) from exogenous ``eps`` with ``donors[k]`` (n, d) set on node k.

    ``c`` is the SCM matrix of ``adjacency`` (:func:`scm_matrix`) as a tensor; ``eps`` and ``c``
    are on the CPU. ``do``: z is computed factually, then intervened nodes take the donor z (their
    parents are cut), and their descendants are recomputed in topological order as
    z_j = sum_p A[p, j] z_p + eps_j; every other node (u included) keeps its factual z exactly.
    ``exogenous``: eps_k is replaced by the donor's eps_k and the whole SCM is run forward (the
    authors' procedure). The caller checks ``mode`` (one of :data:`MODES`) and the donor nodes.
    """
    if mode == "exogenous":
        e2 = eps.clone()
        for k, v in donors.items():
            e2[:, k] = torch.as_tensor(v)
        return scm_forward(e2, c)
    a = torch.as_tensor(adjacency, dtype=torch.float32)
    z = scm_forward(eps, c)
    affected = descendants(adjacency, list(donors)) | set(donors)
    for j in topological_order(adjacency):
        if j in donors:
            z[:, j] = torch.as_tensor(donors[j])
        elif j in affected:
            z[:, j] = torch.einsum("p,bpd->bd", a[:, j], z) + eps[:, j]
    return z

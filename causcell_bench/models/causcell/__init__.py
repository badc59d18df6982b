"""CausCell: causal disentanglement + conditional diffusion for single cells.

Clean-room implementation of Gao, Dong, Shan, Li & Liu, "Causal
disentanglement for single-cell representations and controllable
counterfactual generation", Nat Commun 16, 6775 (2025), written from the
paper's Methods and a description of the authors' public code; docs/causcell.md
describes the model and tabulates where the two differ.

The model knows nothing of the benchmark: expression arrays (dense or scipy
CSR, log1p CP10k), integer label codes and a DAG adjacency matrix go in;
arrays come out. The benchmark adapter is :mod:`causcell_bench.methods.causcell`.

Pieces (paper section in brackets) and the module that holds each:

- causal disentanglement module F (:mod:`.networks`, SCM algebra in :mod:`.dag`):
  an MLP encoder x0 -> q(eps | x0) over m+1 concept tokens of width d; a
  closed-form linear SCM layer z = (I - A^T)^-1 eps per feature dimension
  [Causal disentanglement module]; one linear label predictor per observed
  concept on z_k (cross-entropy on logits, or ``label_head="softmax"``: on
  softmax probabilities, the authors' bounded variant); independence of the
  unexplained token u from the labels through one adversary per concept
  (``independence="adversary"``, bounded: see
  :meth:`CausCellNet._adversary_pair`) or, as the authors do, minus the label
  heads' cross-entropy on u (``"negative_ce"``); KL(q(eps|x0) || N(0, I)),
  mean over dimensions, in nats or bits.
- two optional additions, not in the paper (weight 0 = the paper's objective;
  :mod:`.losses`): an *exclusivity* penalty (z_k holds no linear information
  on a non-ancestor concept's label beyond its own label; u none on any) and
  an *exogenous-independence* penalty (eps_k of a non-root is independent of
  its non-descendants' labels, so a parent's effect on a child must flow
  through the SCM). Both are the optimal linear adversary solved in closed
  form on each batch (:func:`linear_dependence`). Without them, every token
  ends up predicting every label, because nothing in the paper's objective
  removes redundant information from a token. A third, a *non-linear
  exclusivity* penalty (``excl_adversary`` at construction, ``excl_nl_weight``
  in training), adds one MLP adversary per pair, confused towards
  p(y_j | y_k) as u's adversaries are towards p(y_j): a label stored
  non-linearly (in an embedding's norm, say) escapes the linear term.
- generative module G (:mod:`.networks`, schedule and samplers in
  :mod:`.diffusion`): an x0-predicting diffusion model (T = 1000, "linear"
  schedule) whose denoiser takes the noisy cell as ONE query token and the
  m+1 concept tokens as keys/values of cross-attention blocks.
- samplers (:mod:`.diffusion`): the paper's 1000-step ancestral sampler and a
  deterministic DDIM sampler with a chosen number of steps.
- counterfactuals (:mod:`.dag`, donor pools in :mod:`.trainer`): ``mode="do"``
  (graph surgery: the intervened node takes a donor's z, its descendants are
  recomputed through the SCM, everything else is kept) and
  ``mode="exogenous"`` (the authors' swap of the donor's eps, then the full
  SCM forward).
- training with EMA weights, encoding, generation: :class:`CausCellModel`
  (:mod:`.trainer`); its saved form: :mod:`.persistence`.

Conventions: ``adjacency[parent, child] = 1``; the last node is the
unexplained concept u and has no edges.

Every name the single-module ``causcell_bench.models.causcell`` had is
re-exported here, the network classes included, so imports and pickles that
name the old module keep working.
"""

from __future__ import annotations

from causcell_bench.models.causcell.dag import (
    MODES,
    check_dag,
    descendants,
    intervene_scm,
    scm_forward,
    scm_matrix,
    topological_order,
)
from causcell_bench.models.causcell.diffusion import (
    SAMPLERS,
    diffusion_schedule,
    reverse_diffusion,
    sampling_timesteps,
    sinusoidal,
)
from causcell_bench.models.causcell.losses import combination_weights, linear_dependence
from causcell_bench.models.causcell.networks import (
    GEGLU,
    INDEPENDENCE,
    KL_UNITS,
    LABEL_HEADS,
    RECON_REDUCTIONS,
    Block,
    CausCellNet,
    CrossAttention,
    Denoiser,
)
from causcell_bench.models.causcell.trainer import CausCellModel

__all__ = [
    "GEGLU",
    "INDEPENDENCE",
    "KL_UNITS",
    "LABEL_HEADS",
    "MODES",
    "RECON_REDUCTIONS",
    "SAMPLERS",
    "Block",
    "CausCellModel",
    "CausCellNet",
    "CrossAttention",
    "Denoiser",
    "check_dag",
    "combination_weights",
    "descendants",
    "diffusion_schedule",
    "intervene_scm",
    "linear_dependence",
    "reverse_diffusion",
    "sampling_timesteps",
    "scm_forward",
    "scm_matrix",
    "sinusoidal",
    "topological_order",
]

"""The CausCell torch model: SCM layer, DAG checks, interventions, losses, samplers, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causcell_bench.models.causcell import (
    CausCellModel,
    CausCellNet,
    check_dag,
    combination_weights,
    descendants,
    diffusion_schedule,
    linear_dependence,
    reverse_diffusion,
    sampling_timesteps,
    scm_forward,
    scm_matrix,
    topological_order,
)

TINY = dict(d=8, hidden=32, n_blocks=1, heads=2, head_dim=8, ff_mult=2, device="cpu")


def random_dag(rng: np.random.Generator, m: int, p: float = 0.5) -> np.ndarray:
    """Random DAG over m observed nodes (random order) plus an isolated u, as (m+1)x(m+1)."""
    a = np.zeros((m + 1, m + 1), dtype=np.float32)
    perm = rng.permutation(m)
    for i in range(m):
        for j in range(i + 1, m):
            if rng.random() < p:
                a[perm[i], perm[j]] = 1.0
    return a


def chain_dag() -> np.ndarray:
    """0 -> 2 <- 1, 2 -> 3; node 4 is u."""
    a = np.zeros((5, 5), dtype=np.float32)
    a[0, 2] = a[1, 2] = a[2, 3] = 1.0
    return a


# --- SCM layer ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_scm_layer_solves_linear_sem(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 7))
    a = random_dag(rng, m)
    eps = rng.normal(size=(5, m + 1, 3)).astype(np.float32)
    z = scm_forward(torch.from_numpy(eps), torch.from_numpy(scm_matrix(a))).numpy()
    for b in range(eps.shape[0]):
        want = np.linalg.solve(np.eye(m + 1) - a.T, eps[b])  # z = A^T z + eps, per feature column
        np.testing.assert_allclose(z[b], want, rtol=1e-5, atol=1e-5)
    # z really satisfies the structural equations
    np.testing.assert_allclose(z, np.einsum("pj,bpd->bjd", a, z) + eps, rtol=1e-5, atol=1e-5)


def test_scm_layer_is_identity_without_edges() -> None:
    eps = torch.randn(4, 3, 5)
    np.testing.assert_array_equal(scm_forward(eps, torch.from_numpy(scm_matrix(np.zeros((3, 3))))).numpy(), eps.numpy())


def test_dag_helpers() -> None:
    a = chain_dag()
    order = topological_order(a)
    assert order.index(0) < order.index(2) < order.index(3) and order.index(1) < order.index(2)
    assert descendants(a, [0]) == {2, 3}
    assert descendants(a, [3]) == set()


@pytest.mark.parametrize(
    "a, match",
    [
        (np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]]), "not a DAG"),
        (np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]), "not a DAG"),
        (np.array([[1, 0], [0, 0]]), "self-loop"),
        (np.array([[0, 1], [0, 0]]), "unexplained"),
        (np.zeros((2, 3)), "square"),
    ],
)
def test_non_dag_refused(a: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_dag(a)


def test_model_refuses_cycle_and_wrong_size() -> None:
    cyc = np.zeros((3, 3))
    cyc[0, 1] = cyc[1, 0] = 1
    with pytest.raises(ValueError, match="not a DAG"):
        CausCellNet(10, [2, 2], cyc, d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    with pytest.raises(ValueError, match="nodes"):
        CausCellNet(10, [2, 2], np.zeros((2, 2)), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)


# --- interventions ------------------------------------------------------------------
def _intervention_model() -> CausCellModel:
    return CausCellModel(6, [2, 2, 2, 2], chain_dag(), **TINY)


def test_do_on_leaf_changes_only_the_leaf() -> None:
    model = _intervention_model()
    rng = np.random.default_rng(0)
    eps = rng.normal(size=(7, 5, 8)).astype(np.float32)
    z = scm_forward(torch.from_numpy(eps), model.net.C).numpy()
    donor = rng.normal(size=(7, 8)).astype(np.float32)
    zc = model.intervene(eps, {3: donor}, mode="do")
    np.testing.assert_array_equal(zc[:, 3], donor)
    for j in (0, 1, 2, 4):
        np.testing.assert_array_equal(zc[:, j], z[:, j])


def test_do_on_root_changes_exactly_its_descendants() -> None:
    model = _intervention_model()
    rng = np.random.default_rng(1)
    eps = rng.normal(size=(7, 5, 8)).astype(np.float32)
    z = scm_forward(torch.from_numpy(eps), model.net.C).numpy()
    donor = rng.normal(size=(7, 8)).astype(np.float32)
    zc = model.intervene(eps, {0: donor}, mode="do")
    np.testing.assert_array_equal(zc[:, 0], donor)
    np.testing.assert_allclose(zc[:, 2], donor + z[:, 1] + eps[:, 2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(zc[:, 3], zc[:, 2] + eps[:, 3], rtol=1e-6, atol=1e-6)
    for j in (2, 3):
        assert not np.allclose(zc[:, j], z[:, j])
    for j in (1, 4):  # non-descendant and u: untouched
        np.testing.assert_array_equal(zc[:, j], z[:, j])
    # for a root, the donor's z is its eps: graph surgery equals the authors' eps swap
    np.testing.assert_allclose(model.intervene(eps, {0: donor}, mode="exogenous"), zc, rtol=1e-5, atol=1e-5)


def test_do_cuts_parents_of_intervened_node() -> None:
    model = _intervention_model()
    rng = np.random.default_rng(2)
    eps = rng.normal(size=(3, 5, 8)).astype(np.float32)
    z = scm_forward(torch.from_numpy(eps), model.net.C).numpy()
    d0, d2 = rng.normal(size=(2, 3, 8)).astype(np.float32)
    zc = model.intervene(eps, {0: d0, 2: d2}, mode="do")
    np.testing.assert_array_equal(zc[:, 2], d2)  # the parent's change does not reach an intervened node
    np.testing.assert_allclose(zc[:, 3], d2 + eps[:, 3], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(zc[:, 1], z[:, 1])
    # the exogenous mode propagates the swapped eps through the whole SCM instead
    ze = model.intervene(eps, {2: d2}, mode="exogenous")
    np.testing.assert_allclose(ze[:, 2], z[:, 0] + z[:, 1] + d2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        model.intervene(eps, {0: d0}, mode="bogus")
    with pytest.raises(ValueError, match="u cannot"):
        model.intervene(eps, {4: d0}, mode="do")


# --- losses ---------------------------------------------------------------------------
def test_independence_terms_are_bounded() -> None:
    net = CausCellNet(6, [3, 2], np.zeros((3, 3)), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    codes = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0]])
    for scale in (1.0, 1e2, 1e4):
        adv, conf = net.independence_terms(torch.randn(4, 4) * scale, codes)
        assert torch.isfinite(adv) and torch.isfinite(conf)
        assert adv >= 0 and conf >= -1e-6
        z = torch.randn(4, 3, 4) * scale
        assert 0 <= net.exclusivity_term(z, codes) <= 1 + 1e-5


def test_adversary_pairs_follow_the_dag() -> None:
    net = CausCellNet(6, [2, 2, 3, 2], chain_dag(), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    # exclusivity: z_k vs y_j for j neither k nor an ancestor of k (z_k legitimately holds its ancestors)
    u = [(4, j) for j in range(4)]  # u holds no information on any label
    assert set(net.excl_pairs) == {(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3), (2, 3), *u}
    # exogenous: eps_k of a non-root vs the labels of its non-descendants
    assert set(net.exo_pairs) == {(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)}
    ind = CausCellNet(6, [2, 2], np.zeros((3, 3)), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    assert set(ind.excl_pairs) == {(0, 1), (1, 0), (2, 0), (2, 1)} and ind.exo_pairs == []


def test_label_stats() -> None:
    net = CausCellNet(6, [2, 3], np.zeros((3, 3)), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    codes = np.array([[0, 0], [0, 1], [1, 2], [1, 2], [-1, 0]])
    net.set_label_stats(codes, smoothing=0.0)
    np.testing.assert_allclose(net.prior1.numpy(), [0.4, 0.2, 0.4])
    np.testing.assert_allclose(net.prior0.numpy(), [0.5, 0.5])


def test_linear_dependence() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2000,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    noise = torch.randn(2000, 8, generator=g)
    informative = torch.cat([onehot @ torch.randn(3, 4, generator=g) * 5, noise[:, :4]], 1)
    assert linear_dependence(noise, onehot) < 0.02
    assert linear_dependence(informative, onehot) > 0.8
    # scale-free: shrinking z does not hide it
    assert torch.isclose(linear_dependence(informative * 1e-3, onehot), linear_dependence(informative, onehot), atol=1e-3)
    # conditional: z that encodes only the group says nothing beyond it
    grp = torch.nn.functional.one_hot(y, 3).float()
    assert linear_dependence(informative, onehot, grp) < 0.02


def test_training_keeps_adversary_terms_bounded_and_learns_labels() -> None:
    rng = np.random.default_rng(0)
    n, g = 200, 12
    codes = np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n)], 1)
    x = np.abs(rng.normal(size=(n, g)) + 2.0 * np.eye(3)[codes[:, 0]].repeat(4, 1)).astype(np.float32)
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = 1
    model = CausCellModel(g, [3, 2], a, **TINY)
    hist = model.fit(
        x, codes, n_steps=60, batch_size=64, lr=3e-3, adv_weight=10.0, excl_weight=1.0, exo_weight=1.0,
        log_every=10, seed=0,
    )
    for rec in hist:
        assert {"excl", "exo"} <= set(rec)
        assert 0 <= rec["adv"] < 50
        assert -1e-6 <= rec["indep"] < 50
        for key in ("excl", "exo"):
            assert -1e-6 <= rec[key] <= 1 + 1e-5
        assert all(np.isfinite(v) for v in rec.values())
    assert hist[-1]["pred"] < hist[0]["pred"]
    _, z = model.encode(x)
    acc = (model.predict_labels(z)[0] == codes[:, 0]).mean()
    assert acc > 0.8


def test_nonlinear_exclusivity_targets_are_the_training_conditionals() -> None:
    codes = np.array([[0, 0]] * 6 + [[0, 1]] * 2 + [[1, 1]] * 4 + [[0, -1]])  # label 2 of concept 0: never seen
    net = CausCellNet(5, [3, 2], np.zeros((3, 3), np.float32), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4,
                      excl_adversary=True)
    assert net.excl_nl_pairs == [(0, 1), (1, 0)] and len(net.excl_adversaries) == 2
    net.set_label_stats(codes)
    np.testing.assert_allclose(net.cond0_1[0].numpy(), [0.75, 0.25], atol=1e-3)
    np.testing.assert_allclose(net.cond0_1[1].numpy(), [0.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(net.cond0_1[2].numpy(), net.prior1.numpy(), atol=1e-3)  # unseen: the marginal
    np.testing.assert_allclose(net.cond1_0[1].numpy(), [1 / 3, 2 / 3, 0.0], atol=1e-3)
    # without the switch the net has no such parameters (models saved before it load unchanged)
    plain = CausCellNet(5, [3, 2], np.zeros((3, 3), np.float32), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4)
    assert not plain.excl_nl_pairs and not any("excl_adversaries" in k or k.startswith("cond")
                                               for k in plain.state_dict())


def test_nonlinear_exclusivity_catches_a_radius_code_the_linear_term_misses() -> None:
    """z_0 holding y_1 as its norm (a non-linear code, the Kang leak): the closed-form linear term is
    blind to it, a trained adversary reads it and the encoder's confusion term says so; a z_0 that
    holds nothing of y_1 leaves the confusion near 0."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, d = 1024, 4
    y0, y1 = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    codes = torch.stack([y0, y1], 1)
    direction = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    radius = direction * (1.0 + 2.0 * y1[:, None])  # y_1 in the norm, nothing in the mean
    blind = torch.randn(n, d, generator=g)
    onehot = torch.nn.functional.one_hot(y1, 2).float()
    assert linear_dependence(radius, onehot, torch.nn.functional.one_hot(y0, 2).float()) < 0.02

    def confusion(z0: torch.Tensor) -> float:
        net = CausCellNet(6, [2, 2], np.zeros((3, 3), np.float32), d=d, hidden=8, n_blocks=1, heads=1, head_dim=4,
                          excl_adversary=True)
        net.set_label_stats(codes.numpy())
        z = torch.stack([z0, torch.zeros(n, d), torch.zeros(n, d)], 1)
        opt = torch.optim.Adam(net.excl_adversaries.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            net.exclusivity_adversary_terms(z, codes)[0].backward()
            opt.step()
        return float(net.exclusivity_adversary_terms(z, codes)[1])

    caught, clean = confusion(radius), confusion(blind)
    assert caught > 0.15 and clean < 0.03, (caught, clean)


def test_nonlinear_exclusivity_in_training() -> None:
    rng = np.random.default_rng(0)
    n, g = 200, 12
    codes = np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n)], 1)
    x = np.abs(rng.normal(size=(n, g)) + 2.0 * np.eye(3)[codes[:, 0]].repeat(4, 1)).astype(np.float32)
    model = CausCellModel(g, [3, 2], np.zeros((3, 3), np.float32), excl_adversary=True, **TINY)
    hist = model.fit(x, codes, n_steps=40, batch_size=64, excl_nl_weight=1.0, log_every=10, seed=0)
    for rec in hist:
        assert rec["excl_adv"] >= 0 and rec["excl_nl"] >= -1e-6 and np.isfinite(rec["excl_nl"])
    plain = CausCellModel(g, [3, 2], np.zeros((3, 3), np.float32), **TINY)
    with pytest.raises(ValueError, match="excl_adversary=True"):
        plain.fit(x, codes, n_steps=2, batch_size=64, excl_nl_weight=1.0)


def test_combination_weights_favour_rare_combinations() -> None:
    codes = np.array([[0, 0]] * 8 + [[1, 0]] * 2)
    w = combination_weights(codes)
    assert w[-1] > w[0] and np.isclose(w.mean(), 1.0)
    np.testing.assert_array_equal(combination_weights(np.zeros((5, 2), int)), np.ones(5))


def test_schedule() -> None:
    s = diffusion_schedule(1000)
    assert np.isclose(float(s["betas"][0]), 1e-4) and np.isclose(float(s["betas"][-1]), 2e-2)
    assert float(s["abar"][-1]) < 1e-3


# --- samplers and persistence ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> tuple[CausCellModel, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    n, g = 120, 10
    codes = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], 1)
    x = np.abs(rng.normal(size=(n, g)) + codes[:, :1] * 2).astype(np.float32)
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = 1
    model = CausCellModel(g, [2, 2], a, n_timesteps=100, **TINY)
    model.fit(x, codes, n_steps=30, batch_size=32, seed=0)
    model.build_pools(x, codes, pool_size=16, seed=0)
    return model, x, codes


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampler_is_seeded_and_shaped(trained, sampler: str) -> None:
    model, x, _ = trained
    _, z = model.encode(x[:20])
    a = model.sample(z, sampler=sampler, steps=10, seed=1, batch_size=8)
    b = model.sample(z, sampler=sampler, steps=10, seed=1, batch_size=8)
    c = model.sample(z, sampler=sampler, steps=10, seed=2, batch_size=8)
    assert a.shape == (20, x.shape[1]) and np.isfinite(a).all() and (a >= 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    avg = model.sample(z, sampler=sampler, steps=10, n_samples=3, seed=1)
    assert avg.shape == a.shape
    with pytest.raises(ValueError, match="sampler"):
        model.sample(z, sampler="euler")


def test_donor_pools_are_bounded(trained) -> None:
    model, _, codes = trained
    for k, per in enumerate(model.pools):
        for v, (e, z) in enumerate(per):
            assert e.shape == z.shape and e.shape[0] == min(16, int((codes[:, k] == v).sum()))
    d = model.draw_donors(0, 1, 5, np.random.default_rng(0), "do")
    assert d.shape == (5, model.net.d)


def test_state_roundtrip_gives_identical_outputs(trained) -> None:
    model, x, _ = trained
    again = CausCellModel.from_state(model.state(), device="cpu")
    e1, z1 = model.encode(x)
    e2, z2 = again.encode(x)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(model.sample(z1, seed=0, steps=5), again.sample(z2, seed=0, steps=5))
    assert [len(p) for p in again.pools] == [len(p) for p in model.pools]


# --- the switches of issue #14 (ours vs the authors' code) -------------------------------
def _net(**kw) -> CausCellNet:
    torch.manual_seed(0)
    return CausCellNet(6, [3, 2], np.zeros((3, 3)), d=4, hidden=8, n_blocks=1, heads=1, head_dim=4, **kw)


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 6, generator=g) * 3
    codes = torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)], 1)
    return x0, codes


def _losses(
    net: CausCellNet, x0: torch.Tensor, codes: torch.Tensor, seed: int = 0, grad: bool = False, **kw
) -> dict[str, torch.Tensor]:
    with torch.set_grad_enabled(grad):
        return net.losses(x0, codes, torch.ones(x0.shape[0]), torch.Generator().manual_seed(seed), **kw)


class _ZeroDenoiser(torch.nn.Module):
    """x0_hat = 0 whatever the noise, so the reconstruction term is a fixed function of x0."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def test_recon_reduction_sum_scales_with_the_batch() -> None:
    net = _net()
    net.denoiser = _ZeroDenoiser()
    x0, codes = _batch()
    x2, c2 = torch.cat([x0, x0]), torch.cat([codes, codes])
    rec = {r: (_losses(net, x0, codes, recon_reduction=r)["recon"], _losses(net, x2, c2, recon_reduction=r)["recon"])
           for r in ("mean", "gene_sum", "sum")}
    # "sum" (the authors'): summed over cells and genes, so a duplicated batch doubles it
    torch.testing.assert_close(rec["sum"][1], 2 * rec["sum"][0])
    torch.testing.assert_close(rec["sum"][0], x0.pow(2).sum())
    # "mean" and "gene_sum" average over cells: the batch size does not matter
    for r in ("mean", "gene_sum"):
        torch.testing.assert_close(rec[r][1], rec[r][0])
    torch.testing.assert_close(rec["gene_sum"][0], 6 * rec["mean"][0])


def test_softmax_label_head_loss_is_bounded() -> None:
    net = _net()
    with torch.no_grad():
        for p in net.predictors:
            p.weight.mul_(1e4)  # extreme logits: a wrong label costs ~1e4 on logits
    x0, codes = _batch(64)
    logits = _losses(net, x0, codes, label_head="logits")["pred"]
    soft = _losses(net, x0, codes, label_head="softmax")["pred"]
    # cross-entropy of softmax probabilities: at most log(1 + (n - 1) e) per head
    bound = max(np.log(1 + (k - 1) * np.e) for k in (3, 2))
    assert float(soft) <= bound + 1e-5
    assert float(logits) > 10 * bound


def test_kl_in_bits_is_nats_over_ln2() -> None:
    net = _net()
    x0, codes = _batch()
    nats = _losses(net, x0, codes, kl_units="nats")["kl"]
    bits = _losses(net, x0, codes, kl_units="bits")["kl"]
    assert float(nats) > 0
    torch.testing.assert_close(bits, nats / np.log(2.0))


def test_negative_ce_independence_has_no_adversary_and_reaches_everything() -> None:
    adv_net, net = _net(), _net(independence="negative_ce")
    assert len(net.adversaries) == 0 and len(adv_net.adversaries) == 2
    assert not any("adversar" in n for n, _ in net.named_parameters())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in adv_net.parameters())
    x0, codes = _batch()
    terms = _losses(net, x0, codes, grad=True, label_head="softmax")
    assert "adv" not in terms and "adv" in _losses(adv_net, x0, codes)
    # indep = minus the label heads' mean cross-entropy on the sampled u (the same draw as the loss)
    mu, logvar = net.encode(x0)
    eps = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0)) * (0.5 * logvar).exp()
    z_u = net.scm(eps)[:, 2]
    ce = [torch.nn.functional.cross_entropy(p(z_u).softmax(-1), codes[:, k]) for k, p in enumerate(net.predictors)]
    torch.testing.assert_close(terms["indep"], -(ce[0] + ce[1]) / 2)
    assert terms["indep"].item() < 0
    # nothing detached: the term trains both the encoder and the label heads
    terms["indep"].backward()
    assert net.encoder[0].weight.grad.abs().sum() > 0
    assert all(p.weight.grad.abs().sum() > 0 for p in net.predictors)
    with pytest.raises(ValueError, match="independence"):
        _net(independence="gan")


def test_network_details_time_mlp_and_qkv_bias() -> None:
    ours, theirs = _net(), _net(time_mlp_mult=4, qkv_bias=True)
    assert ours.denoiser.time[0].out_features == 8 and theirs.denoiser.time[0].out_features == 32
    assert theirs.denoiser.time[2].in_features == 32
    for attr in ("q", "k", "v"):
        assert getattr(ours.denoiser.blocks[0].attn, attr).bias is None
        assert getattr(theirs.denoiser.blocks[0].attn, attr).bias is not None


def test_raw_combination_weights() -> None:
    codes = np.array([[0, 0]] * 8 + [[1, 0]] * 2)
    np.testing.assert_allclose(combination_weights(codes, rescale=False), [0.2] * 8 + [0.8] * 2, rtol=1e-6)
    np.testing.assert_array_equal(combination_weights(np.zeros((5, 2), int), rescale=False), np.ones(5))


def _toy(n: int = 80, g: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    codes = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], 1)
    x = np.abs(rng.normal(size=(n, g)) + codes[:, :1] * 2).astype(np.float32)
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = 1
    return x, codes, a


def test_ema_schedule_and_online_weights_at_inference() -> None:
    torch.set_num_threads(1)
    x, codes, a = _toy()
    online = CausCellModel(x.shape[1], [2, 2], a, n_timesteps=50, ema_at_inference=False, **TINY)
    online.fit(x, codes, n_steps=10, batch_size=32, ema_start=4, ema_every=3, seed=0)
    assert online.ema_updates == 2  # after steps 6 and 9
    assert online.inference_net is online.net
    mu = online.net.encode(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_array_equal(online.encode(x)[0], mu)
    assert not np.allclose(online.encode(x)[0], online.ema.encode(torch.from_numpy(x))[0].numpy())
    # before ema_start the EMA follows the online weights exactly
    late = CausCellModel(x.shape[1], [2, 2], a, n_timesteps=50, **TINY)
    late.fit(x, codes, n_steps=5, batch_size=32, ema_start=100, seed=0)
    assert late.ema_updates == 0 and late.inference_net is late.ema
    for pe, p in zip(late.ema.parameters(), late.net.parameters(), strict=True):
        torch.testing.assert_close(pe, p.detach(), rtol=0, atol=0)
    # ours: a decay step after every optimizer step
    ours = CausCellModel(x.shape[1], [2, 2], a, n_timesteps=50, **TINY)
    ours.fit(x, codes, n_steps=5, batch_size=32, seed=0)
    assert ours.ema_updates == 5
    assert not torch.equal(ours.ema.encoder[0].weight, ours.net.encoder[0].weight)
    # the schedule and the inference switch survive a save/load
    again = CausCellModel.from_state(online.state(), device="cpu")
    assert again.ema_updates == 2 and again.inference_net is again.net


def test_unclamped_sampling_can_go_negative() -> None:
    x, _, a = _toy()
    model = CausCellModel(x.shape[1], [2, 2], a, n_timesteps=50, **TINY)
    with torch.no_grad():
        model.ema.denoiser.head.bias.fill_(-3.0)  # the denoiser now predicts negative expression
    _, z = model.encode(x[:10])
    for sampler in ("ddim", "ancestral"):
        clamped = model.sample(z, sampler=sampler, steps=5, seed=0, clamp_x0=True)
        free = model.sample(z, sampler=sampler, steps=5, seed=0)  # the default: no clamp
        assert (clamped >= 0).all()
        assert (free < 0).mean() > 0.5


def test_clamping_x0_lifts_the_level_of_silent_genes() -> None:
    """The mechanism measured on real data (docs/causcell.md, "Level on real data"): a denoiser whose x0
    estimates scatter symmetrically around a silent gene's 0 returns ~0 without the clamp, while the clamp
    lifts every estimate and DDIM carries the lift into the next x_t, so the output drifts upwards."""
    gen = torch.Generator().manual_seed(0)
    schedule = diffusion_schedule(1000)
    ts = sampling_timesteps("ddim", 1000, 50)

    def noisy_zero(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # x0 estimate = what the chain carries so far (its x_t scaled back) plus noise around 0
        ab = schedule["abar"][t][:, None].float()
        return 0.5 * ab.sqrt() * x_t + 0.3 * torch.randn(x_t.shape, generator=gen)

    x = torch.randn((2000, 20), generator=torch.Generator().manual_seed(1))
    free = reverse_diffusion(noisy_zero, x.clone(), ts, schedule, sampler="ddim", generator=gen)
    clamped = reverse_diffusion(noisy_zero, x.clone(), ts, schedule, sampler="ddim", generator=gen, clamp_x0=True)
    assert abs(float(free.mean())) < 0.02
    assert float(clamped.mean()) > 0.15


def test_stochastic_encoding_depends_on_the_seed() -> None:
    x, _, a = _toy()
    model = CausCellModel(x.shape[1], [2, 2], a, n_timesteps=50, **TINY)
    np.testing.assert_array_equal(model.encode(x, seed=1)[1], model.encode(x, seed=2)[1])  # posterior mean
    one, again, other = (model.encode(x, n_samples=1, seed=s)[1] for s in (1, 1, 2))
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, other)

"""Test kit for method adapters, ours and third-party plugins.

``tiny_dataset()`` builds a small, already-preprocessed AnnData obeying the
method data contract (see :mod:`causcell_bench.methods.base`), with a causal
structure age -> celltype <- domain so that concept signal is learnable.

``tiny_split()`` is the train/test split of that data the kit uses;
``check_counterfactual_direction()`` checks that do() moves cells towards the
target label. ``check_method(cls)`` is the conformance kit: it fits the method on tiny data
on the CPU and checks shapes, determinism under a seed, the save/load round trip (through
``Method.save``'s manifest, loaded with ``device="cpu"``), that
reconstructions are on the scale of X (``check_scale()``), that progress reports,
if the method gives any, are sane (``check_progress()``), that ``device="cpu"`` leaves no
torch weights elsewhere and that the declared capabilities are honoured. A plugin's test
suite can call it, best with the ``test`` preset (``quick`` plus the class's ``test_params``)::

    from causcell_bench.testing import check_method
    def test_my_method_conforms():
        check_method(MyMethod, preset="test")  # enough to train: reconstructions must match X's scale
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import MANIFEST_FILE, UNEXPLAINED, Method, Progress, class_path, dense_rows


def tiny_dataset(
    n_cells: int = 240, n_genes: int = 60, seed: int = 0, library_size: float = 2000.0
) -> tuple[AnnData, DatasetSpec]:
    """A small preprocessed dataset with concepts age (3), domain (2), celltype (3; child of both).

    ``library_size`` is the median total count per cell; a small one gives sparse data, where
    log1p of expected counts and the mean of log1p(counts) part ways (see :func:`check_scale`).
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 3, n_cells)
    domain = rng.integers(0, 2, n_cells)
    w = rng.normal(0, 1.5, (3 + 2, 3))
    logits = w[age] + w[3 + domain] + rng.gumbel(size=(n_cells, 3))
    ctype = logits.argmax(1)
    fine = ctype * 2 + rng.integers(0, 2, n_cells)
    u = rng.normal(size=n_cells)
    base = rng.normal(0, 1, n_genes)
    effects = [rng.normal(0, 1.2, (k, n_genes)) * (rng.random((k, n_genes)) < 0.25) for k in (3, 2, 3, 6)]
    log_mu = base + effects[0][age] + effects[1][domain] + effects[2][ctype] + 0.5 * effects[3][fine]
    log_mu = log_mu + np.outer(u, rng.normal(0, 0.3, n_genes))
    p = np.exp(log_mu - log_mu.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lib = rng.lognormal(np.log(library_size), 0.3, n_cells)
    counts = rng.poisson(p * lib[:, None]).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1.0
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {
            "age": pd.Categorical([f"age{a}" for a in age], categories=["age0", "age1", "age2"]),
            "domain": pd.Categorical([f"dom{d}" for d in domain], categories=["dom0", "dom1"]),
            "celltype": pd.Categorical([f"type{t}" for t in ctype], categories=["type0", "type1", "type2"]),
            "celltype_fine": pd.Categorical([f"sub{f}" for f in fine]),
            "u": u,
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.layers["counts"] = sp.csr_matrix(counts)
    spec = DatasetSpec(
        name="tiny",
        source="builtin:tiny",
        concepts=["age", "domain", "celltype"],
        edges=[("age", "celltype"), ("domain", "celltype")],
        fine_labels={"celltype": "celltype_fine"},
        n_hvg=None,
    )
    return adata, spec


def tiny_split(
    n_cells: int = 240, n_genes: int = 60, library_size: float = 2000.0
) -> tuple[AnnData, AnnData, DatasetSpec]:
    """(train, test, spec): the seeded 75/25 split of :func:`tiny_dataset` that :func:`check_method` fits on."""
    adata, spec = tiny_dataset(n_cells=n_cells, n_genes=n_genes, library_size=library_size)
    test_mask = np.random.default_rng(1).random(adata.n_obs) < 0.25
    return adata[~test_mask].copy(), adata[test_mask].copy(), spec


def check_counterfactual_direction(
    method: Method, train: AnnData, test: AnnData, spec: DatasetSpec, min_gain: float
) -> None:
    """do(c = v) must raise the mean probability of label v, by more than ``min_gain``, under a classifier
    trained on real cells, for every concept c and every value v (on the test cells not already at v)."""
    from sklearn.linear_model import LogisticRegression

    x_train = train.X.toarray() if sp.issparse(train.X) else np.asarray(train.X)
    for c in spec.concepts:
        clf = LogisticRegression(max_iter=2000).fit(x_train, train.obs[c].astype(str))
        for v in clf.classes_:
            cells = test[(test.obs[c].astype(str) != v).to_numpy()].copy()
            k = list(clf.classes_).index(v)
            before = clf.predict_proba(method.generate(cells, seed=0))[:, k].mean()
            after = clf.predict_proba(method.generate(cells, do={c: v}, seed=0))[:, k].mean()
            assert after > before + min_gain, f"do({c}={v}) did not move cells towards {v}: P {before:.3f} -> {after:.3f}"


SCALE_TOLERANCE = 0.25
"""How far (relative) the mean generated value may sit from the real cells' mean in :func:`check_scale`."""


def check_scale(generated: np.ndarray, real: AnnData, tolerance: float = SCALE_TOLERANCE) -> float:
    """Assert that ``generated`` is on X's scale: its mean within ``tolerance`` (relative) of the mean of
    ``real.X``, the cells it reconstructs. Returns the ratio of the two means.

    X is log1p(counts / library * 1e4); a count model must return that transform of its counts in
    expectation, not log1p of its expected counts, which on sparse data sits well above X.
    """
    x = real.X
    real_mean = float(x.mean()) if sp.issparse(x) else float(np.asarray(x, dtype=np.float64).mean())
    gen_mean = float(np.asarray(generated, dtype=np.float64).mean())
    assert real_mean > 0, "the real cells are all zero; cannot check the scale"
    ratio = gen_mean / real_mean
    assert abs(ratio - 1.0) <= tolerance, (
        f"generate() is on another scale than adata.X: mean reconstructed value {gen_mean:.3f} vs "
        f"{real_mean:.3f} in the real cells (ratio {ratio:.2f}; allowed {1 - tolerance:.2f}-{1 + tolerance:.2f}). "
        "Return log1p(counts / library * 1e4) like X; a count model should average that over its "
        "likelihood (causcell_bench.models.utils.expected_log1p_cp10k), not log1p its expected counts. "
        "An undertrained model fails this too: give it more training steps."
    )
    return ratio


def check_progress(reports: Sequence[Progress]) -> None:
    """Assert that a fit's progress reports are sane, phase by phase (a phase: consecutive reports with
    the same ``what``): known unit, 0 <= done <= total, done never decreasing, the last report
    done == total, a finite loss where one is given."""
    phases: list[list[Progress]] = []
    for r in reports:
        assert isinstance(r, Progress), f"progress report {r!r} is not a Progress"
        if phases and phases[-1][-1].what == r.what:
            phases[-1].append(r)
        else:
            phases.append([r])
    for phase in phases:
        what = phase[0].what
        for prev, r in zip([None, *phase], phase):
            assert r.unit in ("steps", "epochs"), f"{what}: unit {r.unit!r} is neither 'steps' nor 'epochs'"
            assert 0 <= r.done <= r.total, f"{what}: done {r.done} outside 0..total {r.total}"
            assert prev is None or r.done >= prev.done, f"{what}: done went back from {prev.done} to {r.done}"
            assert r.loss is None or math.isfinite(r.loss), f"{what}: loss {r.loss} at {r.done}/{r.total} is not finite"
        last = phase[-1]
        assert last.done == last.total, f"{what}: the last report reads {last.done}/{last.total}, not done == total"


def check_method(
    method_cls: type[Method],
    params: dict[str, Any] | None = None,
    *,
    preset: str = "quick",
    n_cells: int = 240,
    n_genes: int = 60,
    check_determinism: bool = True,
    check_output_scale: bool = True,
) -> Method:
    """Run the conformance kit on ``method_cls`` under ``preset`` with ``params`` on top, on the CPU;
    raise AssertionError on the first violation.

    With ``check_output_scale`` (default), reconstructions must also be on X's scale
    (:func:`check_scale`), which needs a budget that actually trains the model on the tiny data;
    switch it off only for deliberately untrained, behaviour-only runs.
    Returns the fitted method so callers can make further, method-specific checks.
    """
    params = params or {}
    train, test, spec = tiny_split(n_cells=n_cells, n_genes=n_genes)
    caps = method_cls.capabilities

    assert isinstance(getattr(method_cls, "name", None), str) and method_cls.name, "method needs a name"
    presets = method_cls.presets
    invented = sorted(set(presets.get("test", {})) - set(presets.get("quick", {})))
    assert not invented, f"the test preset sets {invented}, which quick lacks: test_params may only shrink quick"
    m = method_cls(preset=preset, device="cpu", **params)
    assert m.preset == preset and m.device == "cpu", "__init__ must keep preset and device (Method.__init__ sets them)"

    # outputs before fit must fail clearly, not with a deep traceback
    if caps.embedding != "none":
        _expect_bench_error(lambda: m.embed(test), "embed() before fit()")

    # a closure, not a picklable bound method: save() below must cope with a callback that cannot be pickled
    reports: list[Progress] = []
    m.progress_callback = lambda r: reports.append(r)
    m.fit(train, spec, seed=0)
    if reports:  # reporting is optional (a plugin may not), but what is reported must be sane
        check_progress(reports)
    _check_on_cpu(m, "after fit(device='cpu')")

    emb = None
    if caps.embedding != "none":
        emb = m.embed(test)
        for c in spec.concepts:
            assert c in emb, f"embed() lacks concept {c!r}"
            assert isinstance(emb[c], np.ndarray), f"embedding {c!r} is a {type(emb[c]).__name__}, not a numpy array"
            assert emb[c].ndim == 2 and emb[c].shape[0] == test.n_obs, f"embedding {c!r} has shape {emb[c].shape}"
            assert np.isfinite(emb[c]).all(), f"embedding {c!r} has non-finite values"
        assert (UNEXPLAINED in emb) == caps.unexplained, "capabilities.unexplained disagrees with embed()"
        if caps.embedding == "shared":
            first = emb[spec.concepts[0]]
            assert all(np.array_equal(emb[c], first) for c in spec.concepts), "'shared' embedding differs per concept"
        if caps.embedding == "label_lookup":
            for c in spec.concepts:
                for value in test.obs[c].unique():
                    rows = emb[c][(test.obs[c] == value).to_numpy()]
                    assert np.allclose(rows, rows[0], atol=1e-5), f"'label_lookup' embedding of {c} varies within a label"

    gen = None
    if caps.reconstruct:
        gen = m.generate(test, seed=0)
        assert isinstance(gen, np.ndarray), f"generate() returned a {type(gen).__name__}, not a numpy array"
        assert gen.shape == (test.n_obs, test.n_vars), f"generate() shape {gen.shape} != {(test.n_obs, test.n_vars)}"
        assert np.isfinite(gen).all(), "generate() returned non-finite values"
        if check_output_scale:
            check_scale(gen, test)
        # the leaderboard leaves a reference's reconstruction metrics unscored on this declaration
        echoes = np.allclose(gen, dense_rows(test.X, slice(None)), rtol=0, atol=1e-6)
        assert echoes == caps.reconstruction_is_input, (
            "generate() returns the input cells: declare capabilities.reconstruction_is_input=True" if echoes else
            "capabilities.reconstruction_is_input is True but generate() does not return the input cells")
        if check_determinism:
            again = m.generate(test, seed=0)
            np.testing.assert_allclose(gen, again, rtol=1e-4, atol=1e-4, err_msg="generate() not deterministic under a seed")
            if not caps.stochastic and getattr(method_cls, "kind", "method") != "control":
                # a method that samples must say so: the truth task would score its one draw as a mean
                other = m.generate(test, seed=1)
                np.testing.assert_allclose(gen, other, rtol=1e-4, atol=1e-4, err_msg=(
                    "generate() changes with the seed: declare capabilities.stochastic=True"))

    cf = None
    if caps.counterfactual:
        target = spec.concepts[0]
        value = str(train.obs[target].cat.categories[-1])
        cf = m.generate(test, do={target: value}, seed=0)
        assert cf.shape == (test.n_obs, test.n_vars), "counterfactual shape wrong"
        assert np.isfinite(cf).all(), "counterfactual has non-finite values"
        _expect_bench_error(lambda: m.generate(test, do={target: "no-such-value"}, seed=0), "do() with an unseen value")
        # the point estimate the truth task scores: one output for a deterministic method, a mean for a sampler
        expected = m.expected_generate(test, do={target: value}, seed=0, n_draws=2)
        assert expected.shape == cf.shape and np.isfinite(expected).all(), "expected_generate() shape or values wrong"
        if not caps.stochastic and check_determinism:
            np.testing.assert_allclose(expected, cf, rtol=1e-4, atol=1e-4,
                                       err_msg="not capabilities.stochastic, yet expected_generate() != generate()")
        _expect_bench_error(lambda: m.generate(test, do={"no_such_concept": value}, seed=0), "do() on an unknown concept")
    else:
        try:
            m.generate(test, do={spec.concepts[0]: str(train.obs[spec.concepts[0]].cat.categories[0])}, seed=0)
        except (NotImplementedError, BenchError):
            pass
        else:
            raise AssertionError("capabilities.counterfactual is False but generate(do=...) succeeded")

    # genes the model does not know are refused clearly
    if caps.reconstruct or caps.embedding != "none":
        bad = test[:, ::-1].copy()
        call = (lambda: m.generate(bad, seed=0)) if caps.reconstruct else (lambda: m.embed(bad))
        _expect_bench_error(call, "data with other genes")

    # every declared generate option is a keyword argument of generate()
    takes = inspect.signature(method_cls.generate).parameters
    for option in method_cls.generate_options:
        assert option in takes, f"generate_options declares {option!r}, which generate() does not take"

    # save / load round trip gives the same fitted method: same parameters, outputs and device
    with tempfile.TemporaryDirectory() as d:
        m.save(d)
        manifest = Path(d) / MANIFEST_FILE
        assert manifest.is_file(), (
            f"save() wrote no {MANIFEST_FILE}: let Method.save write it, and write the model's own files in _save_state"
        )
        saved = json.loads(manifest.read_text())
        assert saved.get("class") == class_path(method_cls) and saved.get("method") == method_cls.name, (
            f"{MANIFEST_FILE} names {saved.get('method')} ({saved.get('class')}), not {method_cls.name} "
            f"({class_path(method_cls)})"
        )
        m2 = method_cls.load(d, device="cpu")
        assert type(m2) is method_cls, f"load() returned a {type(m2).__name__}, not a {method_cls.__name__}"
        assert m2.is_fitted, "the loaded method is not fitted"
        assert m2.preset == m.preset and m2.params == m.params, "preset or params changed after load"
        assert m2.device == "cpu", f"load(device='cpu') gave a method on {m2.device!r}"
        assert m2.var_names_ == m.var_names_ and m2.categories_ == m.categories_ and m2.spec_ == m.spec_, (
            "the genes, categories or spec remembered at fit time changed after load"
        )
        _check_on_cpu(m2, "after load(device='cpu')")
        if emb is not None:
            emb2 = m2.embed(test)
            for c in emb:
                np.testing.assert_allclose(emb[c], emb2[c], rtol=1e-4, atol=1e-4, err_msg=f"embedding {c} changed after load")
        if gen is not None and check_determinism:
            np.testing.assert_allclose(gen, m2.generate(test, seed=0), rtol=1e-4, atol=1e-4, err_msg="generate() changed after load")
        if cf is not None and check_determinism:
            np.testing.assert_allclose(cf, m2.generate(test, do={target: value}, seed=0), rtol=1e-4, atol=1e-4,
                                       err_msg="generate(do=...) changed after load")
    return m


def _check_on_cpu(method: Method, when: str) -> None:
    """Every torch module or tensor the method holds (directly or one object deeper, e.g. ``model_.module``)
    lives on the CPU: a method told device="cpu" must not use a GPU that happens to be there."""
    torch = sys.modules.get("torch")
    if torch is None:  # never imported: the method holds no torch objects (and a plugin need not install torch)
        return
    for where, obj in _held_objects(method):
        if isinstance(obj, torch.nn.Module):
            devices = {p.device.type for p in obj.parameters()} | {b.device.type for b in obj.buffers()}
        elif isinstance(obj, torch.Tensor):
            devices = {obj.device.type}
        else:
            continue
        assert devices <= {"cpu"}, f"{when}: {where} ({type(obj).__name__}) is on {sorted(devices)}, not the CPU"


def _held_objects(obj: Any, prefix: str = "", depth: int = 2) -> list[tuple[str, Any]]:
    """(attribute path, value) of ``obj``'s instance attributes, ``depth`` objects deep."""
    out: list[tuple[str, Any]] = []
    for key, value in vars(obj).items():
        where = f"{prefix}.{key}" if prefix else key
        out.append((where, value))
        if depth > 1 and hasattr(value, "__dict__") and not isinstance(value, type):
            out += _held_objects(value, where, depth - 1)
    return out


def _expect_bench_error(fn: Any, what: str) -> None:
    try:
        fn()
    except BenchError:
        return
    except Exception as e:  # any other type: report what was raised instead
        raise AssertionError(f"{what} raised {type(e).__name__}: {e}; expected a clear BenchError") from e
    raise AssertionError(f"{what} did not raise")

"""Control-scaled scores, ranks and the verdicts on the scale itself.

Scaling (docs/metrics.md, "From metrics to scores"): each metric's fold mean is scaled
between the negative and positive control of the same dataset and setting,
``(v - neg) / (pos - neg)`` clipped to [0, 1] (:func:`scale`: a control that wins
gives 0, never NaN), averaged within metric groups, groups within categories, and
categories into ``overall``. Where a control has no value for a metric (e.g. the
positive control has no counterfactuals), the worst (for neg) or best (for pos)
value a method reached stands in, and the table says so. Only capability-complete
methods are ranked. Raw values stay in the tables; :func:`violations` and
:func:`uninformative` list where the scale cannot be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from causcell_bench import metrics as _metrics
from causcell_bench.leaderboard.common import CONTROL_NAMES, KEYS, NEG, POS
from causcell_bench.leaderboard.tables import headline, summarize

N_BOOTSTRAP = 200
#: the note of every reference's row in the score table
REFERENCE_NOTE = "reference: no overall, scored only where it makes a real prediction"


def scale(vals: dict[str, float], hib: bool, references: Iterable[str] = ()) -> tuple[dict[str, float], list[str]]:
    """Control-scaled values (0 = negative control, 1 = positive control), never NaN because a control won.

    A missing control is stood in for by the worst / best value of any method, the negative control
    included (a negative control that beats every method is then the best: every method scores 0).
    When the negative control is at least as good as the positive one, the metric cannot separate
    anything on this data: every method gets 0 and the note says so.
    """
    good = {m: (v if hib else -v) for m, v in vals.items() if v is not None and math.isfinite(v)}
    notes: list[str] = []
    skip = {*CONTROL_NAMES, *references}
    others = {m: v for m, v in good.items() if m not in skip}
    pool = {**others, **({NEG: good[NEG]} if NEG in good else {})}
    if POS in good:
        p = good[POS]
    else:
        p, _ = max(pool.values(), default=np.nan), notes.append("best value stands in for the positive control")
    if NEG in good:
        n = good[NEG]
    else:
        n, _ = min(others.values(), default=np.nan), notes.append("worst method stands in for the negative control")
    out: dict[str, float] = {}
    degenerate = not (math.isfinite(p) and math.isfinite(n)) or p <= n
    if degenerate:
        notes.append("negative control at least as good as the positive control: every method scores 0")
    for m in vals:
        if m not in good:
            out[m] = np.nan
        elif degenerate:
            out[m] = 1.0 if m == POS else 0.0
        else:
            out[m] = float(np.clip((good[m] - n) / (p - n), 0.0, 1.0))
    return out, notes


def violations(summary: pd.DataFrame) -> pd.DataFrame:
    """Every scored metric value outside [negative control, positive control], per method (controls
    themselves excluded): the cases control scaling clips, listed so that none is hidden."""
    head = headline(summary)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"]))
        hib = bool(block["higher_is_better"].iloc[0])
        sign = 1.0 if hib else -1.0
        for ctrl, worse in ((NEG, True), (POS, False)):
            cv = vals.get(ctrl, np.nan)
            if cv is None or not math.isfinite(cv):
                continue
            for method, v in vals.items():
                if method in CONTROL_NAMES or not math.isfinite(v):
                    continue
                if (worse and sign * (v - cv) < 0) or (not worse and sign * (v - cv) > 0):
                    rows.append({"dataset": dataset, "setting": setting, "method": method, "metric": metric,
                                 "value": v, "control": ctrl, "control_value": cv,
                                 "violation": "worse than the negative control" if worse
                                 else "better than the positive control"})
    return pd.DataFrame(rows, columns=["dataset", "setting", "method", "metric", "value", "control",
                                       "control_value", "violation"])


def unseparated(summary: pd.DataFrame) -> pd.DataFrame:
    """Scored metrics on which the positive control is no better than the negative one (e.g. a probe
    for a concept with a value per cell: the positive control at chance). Nothing can mean anything on
    them here, and :func:`scale` gives every method 0: rows in the shape of
    :func:`~causcell_bench.leaderboard.tables.degenerate_table` (fold and seed ``all``), so that they
    are listed with the metrics a fold could not measure."""
    head = headline(summary)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"].astype(float)))
        p, n = vals.get(POS, np.nan), vals.get(NEG, np.nan)
        if not (math.isfinite(p) and math.isfinite(n)):
            continue
        hib = bool(block["higher_is_better"].iloc[0])
        if (p <= n) if hib else (p >= n):
            rows.append({"dataset": dataset, "method": POS, "setting": setting, "fold": "all", "seed": "all",
                         "metric": metric,
                         "reason": f"uninformative: the positive control ({p:.3g}) is no better than the negative "
                                   f"control ({n:.3g}) on this data, so every method scores 0 on it"})
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "metric", "reason"])


def uninformative(summary: pd.DataFrame, references: Iterable[str] = ("no_change", "group_mean")) -> pd.DataFrame:
    """Scored metrics on which a trivial reference (``no_change``, ``group_mean``) beats every method:
    on this dataset the metric cannot show that any model learned more than the reference. A
    reference's ``trivial`` values (:func:`~causcell_bench.leaderboard.tables.metric_role`: its
    reconstruction is the input cell) are not scored, so they are no evidence here either."""
    head = headline(summary)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        hib = bool(block["higher_is_better"].iloc[0])
        methods = block[(block["kind"] == "method") & np.isfinite(block["mean"].astype(float))]
        if methods.empty:
            continue
        best = methods.loc[methods["mean"].idxmax() if hib else methods["mean"].idxmin()]
        for ref in references:
            r = block[block["method"] == ref]
            if r.empty or not np.isfinite(r["mean"].iloc[0]):
                continue
            v = float(r["mean"].iloc[0])
            if (v > best["mean"]) if hib else (v < best["mean"]):
                rows.append({"dataset": dataset, "setting": setting, "metric": metric, "reference": ref,
                             "reference_value": v, "best_method": best["method"], "best_value": float(best["mean"])})
    return pd.DataFrame(rows, columns=["dataset", "setting", "metric", "reference", "reference_value",
                                       "best_method", "best_value"])


def scores(summary: pd.DataFrame, *, tidy: pd.DataFrame | None = None, parts: pd.DataFrame | None = None,
           n_boot: int = N_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Control-scaled scores per group, per category and overall, per (dataset, method, setting).

    ``overall`` is the mean over categories (disentanglement, fidelity, realism, counterfactual) of
    the mean over each category's groups. Ranked methods (``kind == "method"``) must have every
    category that any method of that dataset and setting has: a method lacking one (scVI has no
    counterfactuals; label-lookup embeddings are not ranked on disentanglement) keeps its partial
    overall, marked ``complete = False``, and gets no rank. Controls and references are shown, never
    ranked; a reference gets category scores only where it makes a real prediction and no overall. With ``tidy`` holding several folds or seeds, ``rank_lo``/``rank_hi`` give a 95% bootstrap
    interval of each ranked method's rank (folds x seeds resampled ``n_boot`` times) and ``tied``
    lists the neighbours whose intervals overlap. With a single fold x seed, ``parts``
    (:func:`~causcell_bench.leaderboard.tables.part_table`: the fold's test cells scored in disjoint
    parts) stands in for the folds: the bootstrap resamples parts, the mean of K parts of n/K cells
    varying about as much as the score of the n cells. ``rank_basis`` says which was resampled.
    """
    groups, categories = _metrics.GROUPS, _metrics.CATEGORIES
    base = _scores_once(summary)
    if base.empty:
        return base
    if base["dataset"].nunique() > 1:
        # the run's leaderboard across datasets (the paper's Fig. 1): a rank of its own, with an interval
        base["rank_all"] = base["method"].map(cross_dataset_ranks(base))
        base["rank_all_lo"] = base["rank_all_hi"] = np.nan
    if tidy is not None and not tidy.empty:
        base = _bootstrap_ranks(base, tidy, parts, n_boot=n_boot, seed=seed)
    cols = [*KEYS, "kind", "embedding", *[g for g in groups if g in base.columns],
            *[c for c in categories if c in base.columns], "overall", "overall_sd", "complete", "rank",
            "rank_lo", "rank_hi", "rank_basis", "tied", "rank_all", "rank_all_lo", "rank_all_hi", "note"]
    return base[[c for c in dict.fromkeys(cols) if c in base.columns]]


def _scores_once(summary: pd.DataFrame) -> pd.DataFrame:
    head = headline(summary)
    empty_cols = [*KEYS, "kind", "embedding", "overall", "complete", "rank", "note"]
    if head.empty:
        return pd.DataFrame(columns=empty_cols)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"]))
        refs = block.loc[block["kind"] == "reference", "method"]
        scaled, notes = scale(vals, bool(block["higher_is_better"].iloc[0]), refs)
        note = "; ".join(f"{metric}: {n}" for n in notes)
        for method, v in scaled.items():
            rows.append({"dataset": dataset, "setting": setting, "method": method, "metric": metric,
                         "group": block["group"].iloc[0], "scaled": v, "note": note})
    scaled_df = pd.DataFrame(rows)
    first = head.groupby(KEYS, sort=False)[["embedding", "kind"]].first()
    per_group = scaled_df.groupby([*KEYS, "group"], sort=False)["scaled"].mean().unstack("group")
    per_group = per_group.reindex(columns=[g for g in _metrics.GROUPS if g in per_group.columns]).join(first)
    # label-lookup embeddings are identical within a label: not ranked on disentanglement
    lookup = per_group["embedding"] == "label_lookup"
    for g in _metrics.CATEGORIES["disentanglement"]:
        if g in per_group.columns:
            per_group.loc[lookup, g] = np.nan
    cats = []
    for cat, gs in _metrics.CATEGORIES.items():
        present = [g for g in gs if g in per_group.columns]
        if present:
            per_group[cat] = per_group[present].mean(axis=1, skipna=True)  # a one-group category keeps its name
            cats.append(cat)
    per_group["overall"] = per_group[cats].mean(axis=1, skipna=True)
    # a reference is scored only where it predicts (metric_role drops its trivial values): an average
    # over those few categories would not compare with a method's, so it gets no overall
    reference = per_group["kind"] == "reference"
    per_group.loc[reference, "overall"] = np.nan
    # the categories a ranked method must have: those any ranked method of its dataset and setting has
    per_group["complete"] = True
    missing = pd.Series([[] for _ in range(len(per_group))], index=per_group.index, dtype=object)
    for _, idx in per_group.groupby(level=["dataset", "setting"], sort=False).groups.items():
        block = per_group.loc[idx]
        ranked = block["kind"] == "method"
        required = [c for c in cats if block.loc[ranked, c].notna().any()] if ranked.any() else cats
        gaps = block[required].isna()
        per_group.loc[idx, "complete"] = ~gaps.any(axis=1)
        for i in idx:
            missing.at[i] = [c for c in required if gaps.at[i, c]]
    per_group["rank"] = np.nan
    for (dataset, setting), idx in per_group.groupby(level=["dataset", "setting"], sort=False).groups.items():
        block = per_group.loc[idx]
        ok = block[(block["kind"] == "method") & block["complete"].astype(bool)]
        if ok.empty:
            continue
        ranks = ok["overall"].rank(ascending=False, method="min")
        per_group.loc[ranks.index, "rank"] = ranks
    notes = scaled_df.groupby(KEYS, sort=False)["note"].apply(lambda s: "; ".join(sorted({n for n in s if n})))
    per_group = per_group.join(notes.rename("note"))
    partial = missing.map(lambda m: f"partial overall: no {', '.join(m)}" if m else "")
    partial[reference.to_numpy()] = REFERENCE_NOTE
    per_group["note"] = [("; ".join(x for x in (p, n) if x)) for p, n in zip(partial, per_group["note"].fillna(""))]
    return per_group.reset_index()


def _bootstrap_ranks(base: pd.DataFrame, tidy: pd.DataFrame, parts: pd.DataFrame | None, *, n_boot: int,
                     seed: int) -> pd.DataFrame:
    """Add ``overall_sd`` (sd of the overall over folds x seeds) and, with at least two units (folds x
    seeds, else cell parts), ``rank_lo``/``rank_hi`` (2.5/97.5% of bootstrap ranks), ``rank_basis`` and
    ``tied``."""
    base = base.copy()
    units = tidy[["fold", "seed"]].drop_duplicates().to_records(index=False).tolist()
    base["rank_basis"] = "folds x seeds"
    per_unit = []
    for fold, sd in units:
        one = _scores_once(summarize(tidy[(tidy["fold"] == fold) & (tidy["seed"] == sd)]))
        per_unit.append(one.set_index(KEYS)["overall"])
    if len(per_unit) >= 2:
        base["overall_sd"] = base.set_index(KEYS).index.map(pd.concat(per_unit, axis=1).std(axis=1).to_dict())
    else:
        base["overall_sd"] = np.nan
    base["rank_lo"] = base["rank_hi"] = np.nan
    base["tied"] = ""
    if len(units) < 2 and parts is not None and not parts.empty:
        # only blocks where every method has its parts: a missing one would shift the others' ranks
        have = parts.groupby(["dataset", "setting"])["method"].agg(frozenset)
        need = tidy.groupby(["dataset", "setting"])["method"].agg(frozenset)
        whole = [k for k, v in have.items() if need.get(k) == v]
        parts = parts[pd.MultiIndex.from_frame(parts[["dataset", "setting"]]).isin(whole)]
    if len(units) < 2 and parts is not None and parts["part"].nunique() >= 2:
        # one fold x seed: its cell parts are the units (relabelled as folds for summarize)
        tidy = _parts_as_folds(tidy, parts)
        units = tidy[["fold", "seed"]].drop_duplicates().to_records(index=False).tolist()
        base["rank_basis"] = f"{len(units)} cell parts of one fold"
    if len(units) < 2 or not np.isfinite(base["rank"].astype(float)).any():  # nothing to resample, or no one ranked
        base["rank_basis"] = ""
        return base
    rng = np.random.default_rng(seed)
    unit_rows = {u: tidy[(tidy["fold"] == u[0]) & (tidy["seed"] == u[1])] for u in units}
    boots: dict[tuple[str, str, str], list[float]] = {}
    boots_all: dict[str, list[float]] = {}
    ranked_all: dict[tuple[int, ...], dict[str, float]] = {}
    # the ranks of a draw depend only on which units it holds, not their order: with few units most
    # draws repeat one already scored (5 units: ~87 distinct of 200), so each multiset is scored once
    ranked: dict[tuple[int, ...], list[tuple[tuple[str, str, str], float]]] = {}
    for b in range(n_boot):
        pick = tuple(sorted(int(i) for i in rng.integers(0, len(units), size=len(units))))
        if pick not in ranked:
            # each drawn unit is relabelled as its own fold so repeats count as separate folds
            sample = pd.concat([unit_rows[units[i]].assign(fold=j, seed=0) for j, i in enumerate(pick)])
            one = _scores_once(summarize(sample))
            ok = one[np.isfinite(one["rank"].astype(float))]
            ranked[pick] = [((d, m, st), float(r)) for d, m, st, r in
                            zip(ok["dataset"], ok["method"], ok["setting"], ok["rank"])]
            ranked_all[pick] = cross_dataset_ranks(one) if "rank_all" in base.columns else {}
        for key, r in ranked[pick]:
            boots.setdefault(key, []).append(r)
        for method, r in ranked_all[pick].items():
            boots_all.setdefault(method, []).append(r)
    for i, r in base.iterrows():
        got = boots.get((r["dataset"], r["method"], r["setting"]))
        if got and np.isfinite(r["rank"]):
            base.loc[i, "rank_lo"], base.loc[i, "rank_hi"] = np.percentile(got, [2.5, 97.5])
    base.loc[~np.isfinite(base["rank_lo"].astype(float)), "rank_basis"] = ""  # says what an interval rests on
    if "rank_all" in base.columns:
        for method, got in boots_all.items():
            at = (base["method"] == method) & np.isfinite(base["rank_all"].astype(float))
            if at.any():
                base.loc[at, "rank_all_lo"], base.loc[at, "rank_all_hi"] = np.percentile(got, [2.5, 97.5])
    for (dataset, setting), block in base.groupby(["dataset", "setting"], sort=False):
        ranked = block[np.isfinite(block["rank"].astype(float))]
        for i, r in ranked.iterrows():
            ties = [m for j, m in zip(ranked.index, ranked["method"]) if j != i
                    and ranked.at[j, "rank_lo"] <= r["rank_hi"] and r["rank_lo"] <= ranked.at[j, "rank_hi"]]
            base.loc[i, "tied"] = ", ".join(ties)
    return base



def _parts_as_folds(tidy: pd.DataFrame, parts: pd.DataFrame) -> pd.DataFrame:
    """The fold's rows once per part, each value replaced by that part's where the part measured it.

    A metric a part cannot measure (a concept combination with too few cells for realism, a label
    missing from the part) keeps its whole-fold value in every part: the parts' overall then covers
    the same categories as the fold's, with no spread from that metric. Only the (dataset, setting)
    blocks that ``parts`` covers are kept."""
    keys = ["dataset", "method", "setting", "metric"]
    blocks = pd.MultiIndex.from_frame(parts[["dataset", "setting"]].drop_duplicates())
    fold = tidy[pd.MultiIndex.from_frame(tidy[["dataset", "setting"]]).isin(blocks)].drop_duplicates(keys)
    by_part = parts.set_index([*keys, "part"])["value"]
    out = []
    for part in sorted(parts["part"].unique()):
        own = by_part.xs(part, level="part").reindex(pd.MultiIndex.from_frame(fold[keys])).to_numpy(dtype=float)
        out.append(fold.assign(value=np.where(np.isfinite(own), own, fold["value"].to_numpy(dtype=float)),
                               fold=part, seed=0))
    return pd.concat(out, ignore_index=True)


def cross_dataset_overall(score_table: pd.DataFrame) -> pd.DataFrame:
    """Methods x (dataset, setting) overall scores, plus ``overall``: the mean over datasets of each
    dataset's mean over settings (every dataset weighs the same, however many settings it ran),
    and ``n_datasets``, how many datasets that mean covers; ``rank_all``/``rank_all_lo``/``rank_all_hi``
    where :func:`scores` gave them. Sorted best first."""
    if score_table.empty or "overall" not in score_table.columns:
        return pd.DataFrame(columns=["overall", "n_datasets"])
    wide = score_table.pivot_table(index="method", columns=["dataset", "setting"], values="overall",
                                   aggfunc="first", dropna=False, sort=False)
    per_dataset = score_table.groupby(["method", "dataset"], sort=False)["overall"].mean().unstack("dataset")
    wide.columns = [f"{d}|{s}" for d, s in wide.columns]
    wide["overall"] = per_dataset.mean(axis=1, skipna=True)
    wide["n_datasets"] = per_dataset.notna().sum(axis=1)
    for c in ("rank_all", "rank_all_lo", "rank_all_hi"):
        if c in score_table.columns:
            wide[c] = score_table.groupby("method", sort=False)[c].first()
    return wide.sort_values("overall", ascending=False, na_position="last")


def cross_dataset_ranks(score_table: pd.DataFrame) -> dict[str, float]:
    """Rank (1 = best) of each method by its overall across datasets, among the methods ranked in
    every dataset x setting of the table (a method missing from one, or unranked there, has no
    cross-dataset rank: its mean would not compare)."""
    if "rank" not in score_table.columns:
        return {}
    blocks = score_table[["dataset", "setting"]].drop_duplicates().shape[0]
    ranked = score_table[np.isfinite(score_table["rank"].astype(float))]
    everywhere = ranked.groupby("method")["setting"].size()
    methods = everywhere[everywhere == blocks].index
    if methods.empty:
        return {}
    overall = cross_dataset_overall(score_table[score_table["method"].isin(methods)])["overall"]
    return overall.rank(ascending=False, method="min").to_dict()

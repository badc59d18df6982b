"""The self-contained HTML report (report/index.html) and the heatmap's overall labels and
cross-dataset figure; the page is also rendered in headless Chromium where one is installed."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from causcell_bench import leaderboard
from causcell_bench.config import RunConfig
from causcell_bench.leaderboard import (
    build_report,
    heatmap,
    overall_label,
    status_table,
    summarize,
    tidy_table,
    write_index_html,
)
from causcell_bench.runner import run_grid
from causcell_bench.store import ResultStore


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run (both controls, ID and OOD, one fold) and its report."""
    run_dir = tmp_path_factory.mktemp("html_run")
    cfg = RunConfig(datasets=["synthetic"], methods=["positive_control", "negative_control"],
                    settings=["ID", "OOD"], folds=[0], dataset_kwargs={"n_cells": 300, "n_genes": 60})
    outcomes = run_grid(cfg, run_dir, progress=False, log=lambda s: None)
    assert [o.status for o in outcomes] == ["ok"] * 4, [o.error for o in outcomes]
    paths = build_report(run_dir)
    return {"run_dir": run_dir, "paths": paths, "html": Path(paths["html"]).read_text(encoding="utf-8")}


def _tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    records = list(ResultStore(run_dir).records())
    tidy = tidy_table(records)
    summary = summarize(tidy)
    return tidy, summary, leaderboard.scores(summary), status_table(records)


def _two_datasets(frame: pd.DataFrame) -> pd.DataFrame:
    """The same rows again under a second dataset name (one with markup in it, to test escaping)."""
    if "dataset" not in frame.columns or frame.empty:
        return frame
    return pd.concat([frame, frame.assign(dataset="toy<b>&data")], ignore_index=True)


def test_index_html_is_written_and_self_contained(run: dict[str, Any]) -> None:
    page = run["html"]
    assert run["paths"]["html"].name == "index.html" and run["paths"]["html"].parent.name == "report"
    # nothing to fetch: no external scripts, styles or images, no protocol-relative links
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.IGNORECASE)
    assert refs, "no src/href at all: the page lost its images and table of contents"
    assert not [r for r in refs if re.match(r"(https?:)?//", r, flags=re.IGNORECASE)]
    assert "<link" not in page.lower() and "@import" not in page
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3  # the heatmap and one bar chart per setting
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_index_html_holds_every_section(run: dict[str, Any]) -> None:
    page = run["html"]
    for text in ("Heatmaps", "synthetic — ID", "synthetic — OOD", "Every metric", "Failed cells",
                 "Provenance", "Package versions", "Run config", "Timings and peak memory", "Violations"):
        assert text in page, text
    assert page.count('<table class="sortable') >= 5  # scores and metrics per setting, timings
    # the controls are marked (and explained in the legend)
    assert '<tr class="control"><th scope="row" data-v="positive_control">' in page
    assert 'class="k control"' in page and 'class="k reference"' in page
    # every metric of summary.csv has a column, with its fold mean
    summary = pd.read_csv(run["paths"]["summary"])
    for metric in summary["metric"].unique():
        assert f">{metric} " in page, metric
    # provenance: the run config and the cells' package versions
    assert '"n_cells": 300' in html.unescape(page) and "scikit-learn" in page
    assert "Every cell ran: no failures." in page
    assert "Overview across datasets" not in page  # one dataset: no cross-dataset table


def test_failed_cells_and_names_are_escaped(run: dict[str, Any], tmp_path: Path) -> None:
    tidy, summary, score_table, status = _tables(run["run_dir"])
    failed = pd.DataFrame([{"dataset": "synthetic", "method": "<img src=x onerror=alert(1)>", "setting": "ID",
                            "fold": 0, "seed": 0, "status": "failed",
                            "error": "Traceback (most recent call last):\n  ...\n"
                                     "RuntimeError: boom <script>x</script>"}])
    status = pd.concat([status, failed], ignore_index=True)
    page = write_index_html(tmp_path, run["run_dir"], tidy, summary, score_table, status, {}).read_text()
    assert "<script>x" not in page and "<img src=x" not in page
    assert "RuntimeError: boom &lt;script&gt;x&lt;/script&gt;" in page  # the reason: a traceback's last line
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "1 failed" in page and "No heatmap was drawn" in page


def test_cross_dataset_overview_and_heatmap(run: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import funkyheatmappy

    tidy, summary, score_table, status = (_two_datasets(t) for t in _tables(run["run_dir"]))
    score_table = score_table.assign(overall_sd=0.04)
    figures: list[Any] = []
    draw = funkyheatmappy.funky_heatmap

    def spy(*args: Any, **kwargs: Any) -> Any:
        figures.append(draw(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(funkyheatmappy, "funky_heatmap", spy)
    written = heatmap(summary, score_table, tmp_path / "heatmap")
    names = {p.name for p in written}
    assert {"heatmap_all.png", "heatmap_all.svg", "heatmap_synthetic.png", "heatmap_toy_b__data.png"} <= names
    texts = [[t.get_text() for ax in fig.axes for t in ax.texts] for fig in figures]
    # the overall score is printed beside its funkyrect, with the fold sd when the table has one
    assert all("1.00 ± 0.04" in t and "0.00 ± 0.04" in t for t in texts)
    assert "all datasets" in texts[-1] and "toy<b>&data ID" in texts[-1]
    page = write_index_html(tmp_path, run["run_dir"], tidy, summary, score_table, status,
                            {p.name: p for p in written}).read_text()
    assert "Overview across datasets" in page and '<th colspan="2" class="grp">toy&lt;b&gt;&amp;data</th>' in page
    assert "toy<b>" not in page
    assert page.index('alt="funky heatmap: all datasets"') < page.index('alt="funky heatmap: synthetic"')


def test_overall_label() -> None:
    assert overall_label(0.6349, 0.0412) == "0.63 ± 0.04"
    assert overall_label(0.6349, float("nan")) == "0.63"
    assert overall_label(float("nan"), 0.1) == "n/a"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# after the report's own script: sort the scores table by clicking "overall" twice, and report what
# the browser saw (images decoded, tables and rows present) into the DOM that --dump-dom prints
PROBE = """<script>
window.addEventListener("load", function () {
  var t = document.querySelector("table.scores");
  var th = Array.prototype.find.call(t.querySelectorAll("th[data-col]"),
                                     function (h) { return h.textContent.trim().indexOf("overall") === 0; });
  var col = Number(th.getAttribute("data-col"));
  function column() {
    return Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[col].getAttribute("data-v"); });
  }
  th.click(); var first = column(), firstSort = th.getAttribute("aria-sort");
  th.click(); var second = column(), secondSort = th.getAttribute("aria-sort");
  var imgs = document.querySelectorAll("img");
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    ready: Array.prototype.map.call(document.querySelectorAll("table.sortable"),
                                    function (x) { return x.getAttribute("data-sort-ready"); }),
    rows: Array.prototype.map.call(document.querySelectorAll("table.sortable"),
                                   function (x) { return x.tBodies[0].rows.length; }),
    first: first, firstSort: firstSort, second: second, secondSort: secondSort,
    images: imgs.length,
    decoded: Array.prototype.filter.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; }).length
  });
  document.body.appendChild(probe);
});
</script>"""


def test_report_renders_in_headless_chromium(run: dict[str, Any], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); the static checks above ran")
    page = run["html"]
    assert page.count("</body>") == 1
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", probe_page.as_uri()], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.DOTALL)
    assert match, "the probe did not run: a script error stopped the page's scripts"
    got = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    n_tables = page.count('<table class="sortable')
    assert got["ready"] == ["1"] * n_tables  # the sort script set up every table
    assert len(got["rows"]) == n_tables and min(got["rows"]) >= 1  # sorting kept every row
    assert got["images"] == page.count("<img ") and got["decoded"] == got["images"]
    # first click: best first; second: reversed (positive control 1, negative control 0)
    assert got["firstSort"] == "descending" and got["secondSort"] == "ascending"
    first = [float(v) for v in got["first"] if v]
    second = [float(v) for v in got["second"] if v]
    assert first == sorted(first, reverse=True) and second == sorted(second) and first[0] > first[-1]
    # and it paints: a screenshot with content, not a blank page
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", Path(run["paths"]["html"]).as_uri()],
                   capture_output=True, timeout=180, check=True)
    from PIL import Image

    with Image.open(shot) as im:
        lo, hi = im.convert("L").getextrema()
    assert im.size == (1200, 1600) and lo < 100 < hi


def test_cross_dataset_ranks_need_a_rank_in_every_dataset_and_setting() -> None:
    from causcell_bench.leaderboard.scoring import cross_dataset_ranks

    rows = [  # dataset, method, setting, overall, rank
        ("a", "m1", "ID", 0.9, 1), ("a", "m2", "ID", 0.5, 2), ("a", "m3", "ID", 0.7, 3),
        ("b", "m1", "ID", 0.1, 2), ("b", "m2", "ID", 0.6, 1), ("b", "m3", "ID", 0.9, float("nan")),
        ("b", "m1", "OOD", 0.3, 2), ("b", "m2", "OOD", 0.4, 1),  # m3 has no OOD on b: no cross rank
    ]
    table = pd.DataFrame(rows, columns=["dataset", "method", "setting", "overall", "rank"])
    # m1: (0.9 + mean(0.1, 0.3)) / 2 = 0.55; m2: (0.5 + 0.5) / 2 = 0.5: every dataset weighs the same
    assert cross_dataset_ranks(table) == {"m1": 1.0, "m2": 2.0}


def test_a_two_dataset_run_ranks_methods_across_datasets(tmp_path: Path) -> None:
    """The paper's Fig. 1 on a real two-dataset run (synthetic + scanpy's pbmc68k): one figure and one
    page over both datasets, with each method's rank across them and its bootstrap interval."""
    cfg = RunConfig(datasets=["synthetic", "pbmc68k"], methods=["CPA", "Biolord", "positive_control",
                    "negative_control"], settings=["ID"], folds=[0], preset="test", cell_parts=3,
                    dataset_kwargs={"n_cells": 400, "n_genes": 100})
    outcomes = run_grid(cfg, tmp_path, progress=False, log=lambda s: None)
    assert [o.status for o in outcomes] == ["ok"] * 8, [o.error for o in outcomes]
    paths = build_report(tmp_path)
    table = pd.read_csv(paths["scores"])
    ranked = table[table["method"].isin(["CPA", "Biolord"])]
    assert ranked["rank_all"].notna().all() and set(ranked["rank_all"]) == {1.0, 2.0}
    assert ((ranked["rank_all_lo"] <= ranked["rank_all"]) & (ranked["rank_all"] <= ranked["rank_all_hi"])).all()
    assert table.loc[table["method"].str.endswith("control"), "rank_all"].isna().all()  # controls: never ranked
    best = ranked.groupby("method")["overall"].mean().idxmax()
    assert set(ranked.loc[ranked["method"] == best, "rank_all"]) == {1.0}
    written = {Path(p).name for p in paths.get("heatmaps", [])} if "heatmaps" in paths else \
        {p.name for p in (tmp_path / "report").iterdir()}
    assert {"heatmap_all.png", "heatmap_all.svg", "heatmap_synthetic.png", "heatmap_pbmc68k.png"} <= written
    page = Path(paths["html"]).read_text(encoding="utf-8")
    assert "Overview across datasets" in page
    lo, hi = ranked.loc[ranked["method"] == best, ["rank_all_lo", "rank_all_hi"]].iloc[0]
    assert f"rank 1 [{lo:.0f}–{hi:.0f}]" in page
    board = Path(paths["markdown"]).read_text(encoding="utf-8")
    assert board.index("## All datasets") < board.index("## synthetic — ID")
    assert f"| {best} | 1 [{lo:.0f}–{hi:.0f}] |" in board and "| *positive_control* (control) |  | 1.000 |" in board

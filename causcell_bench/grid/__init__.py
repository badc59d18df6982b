"""The benchmark grid below the runner: what a cell is and what it stores (:mod:`.record`), the
data a process holds for its cells (:mod:`.data`), the code of one cell (:mod:`.cell`) and what
it scores by the method's capabilities (:mod:`.evaluate`), and the executors that run cells
(:mod:`.executors`). The runner (:mod:`causcell_bench.runner`) orchestrates: it expands the grid,
resumes, claims cells and picks an executor; nothing here imports it.
"""

from causcell_bench.grid.record import CellKey, CellRecord, cell_hash

__all__ = ["CellKey", "CellRecord", "cell_hash"]

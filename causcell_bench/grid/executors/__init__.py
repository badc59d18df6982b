"""Executors: what runs a batch of grid cells (:class:`~causcell_bench.grid.executors.base.Executor`).

``local`` runs each cell in a child process of this machine, ``ray`` each as a Ray task. Both run
the same cell code (:func:`causcell_bench.grid.cell.execute_cell`) and write the same records, so a
run started under one resumes under the other. Executors import the grid modules only: never the
runner, the CLI or each other.
"""

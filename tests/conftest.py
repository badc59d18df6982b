"""Test-session settings: tests run in parallel (pytest -n 2) on 2 cores, so every torch user
gets one thread; two workers with two threads each would oversubscribe the cores."""

from __future__ import annotations

import os

os.environ.setdefault("CAUSCELL_BENCH_THREADS", "1")  # forked grid cells (runner)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # again before every test: code under test may resize the pool (a grid cell, a CLI command)
    torch.set_num_threads(1)

"""The aggregation-speed benchmark's floors and its ratio column, on a tiny batch."""

from __future__ import annotations

import hashlib

import numpy as np
from rich.console import Console

from benchmarks.aggregation_speed import (
    default_contenders,
    exact_gram,
    float32_gram,
    make_workload,
    reply_digests,
    run_benchmark,
)


def test_floors_compute_what_they_are_named_after() -> None:
    workload = make_workload(5, 300, seed=1)
    rows = workload.updates.astype(np.float64)
    brute = np.array([[float(np.dot(a, b)) for b in rows] for a in rows])
    np.testing.assert_allclose(exact_gram(workload), brute, rtol=1e-12)
    np.testing.assert_allclose(float32_gram(workload), brute, rtol=1e-4)
    assert reply_digests(workload) == [
        hashlib.sha256(row.tobytes()).digest() for row in workload.updates
    ]


def test_every_row_gets_a_ratio_to_flower_fedavg() -> None:
    wanted = {"weighted mean (numpy)", "TrustedFedAvg (default pipeline)", "FedAvg"}
    contenders = [
        contender
        for contender in default_contenders(f=1, beta=0.2, tau=1.0)
        if contender.family == "floor" or contender.name in wanted
    ]
    rows = run_benchmark(make_workload(8, 2_000, seed=0), contenders, 1, Console())
    assert {row.family for row in rows} == {"baseline", "floor", "ours", "flower"}
    fedavg = next(row for row in rows if row.family == "flower")
    assert fedavg.ratio_to_flower_fedavg == 1.0
    for row in rows:
        assert row.ratio_to_flower_fedavg is not None
        assert row.ratio_to_flower_fedavg == row.median_s / fedavg.median_s

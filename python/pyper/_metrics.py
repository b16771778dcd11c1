"""The types of `run.metrics()`: plain dicts, for notebooks and logs (docs/python.md)."""

from __future__ import annotations

from typing import List, Optional, TypedDict


class TunedMetrics(TypedDict):
    """What the run chose for a stage with ``workers="auto"``, and why."""

    workers: int
    max: int
    peak: int
    why: str


class _StageFigures(TypedDict):

    name: str
    kind: str
    workers: int
    items_in: int
    items_out: int
    errors: int
    busy: float
    cpu: Optional[float]
    starved: float
    blocked: float
    gil_wait: Optional[float]
    utilization: float
    cpu_ratio: Optional[float]
    throughput: float
    verdict: str
    waits_for_gil: bool
    suggested_workers: Optional[int]


class StageMetrics(_StageFigures, total=False):
    """One stage's figures. Times are in seconds, summed over the stage's workers. A stage
    with ``workers="auto"`` also has ``tuned``."""

    tuned: TunedMetrics


class Metrics(TypedDict):
    """A run's figures: its stages in pipeline order, the bottleneck, the advice."""

    elapsed: float
    cores: int
    bottleneck: Optional[str]
    advice: List[str]
    stages: List[StageMetrics]

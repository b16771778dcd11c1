"""The type variables of the package's generics.

`Pipeline[P, R]` is a pipeline whose first task is called with arguments `P` (a
`ParamSpec`) and whose last task outputs `R`. Python 3.9 has no `ParamSpec`: there, at run
time, `P` is a plain `TypeVar` (the generics only matter to type checkers, which read the
annotations as text), so a subscription such as `Pipeline[[int], str]` must stay in an
annotation, not in code that runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeVar

if sys.version_info >= (3, 10) or TYPE_CHECKING:
    from typing import ParamSpec

    P = ParamSpec("P")
    P2 = ParamSpec("P2")
else:  # pragma: no cover - Python 3.9
    P = TypeVar("P")
    P2 = TypeVar("P2")

R = TypeVar("R")
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - a join's input

"""An accuracy budget: what a reduced-precision plan must keep of the PyTorch fp32 model.

`agreement>=0.999`: the share of images whose top-1 class is PyTorch fp32's;
`logits<=0.02`: the 99th percentile over those images of the logits' rel. L2 to PyTorch fp32's.
The search decides on its search images and judges the chosen plan on the held-out ones.
Both may be given, separated by a comma; a plan meets the budget when it meets every bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..contract import LOGITS
from ..errors import IRevNetError

AGREEMENT = "agreement"
MAX_BUDGET_CHARS = 200
_TERM = re.compile(rf"^\s*({AGREEMENT}|{LOGITS})\s*(>=|<=)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_DIRECTION = {AGREEMENT: ">=", LOGITS: "<="}


@dataclass(frozen=True)
class Budget:
    agreement: float | None = None  # top-1 agreement with PyTorch fp32, at least
    logits: float | None = None  # p99 of the per-image logits rel. L2 to PyTorch fp32, at most

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`agreement>=A`, `logits<=L` or both, comma-separated.

        Raises:
            IRevNetError: one line naming the term that does not parse.
        """
        if len(text) > MAX_BUDGET_CHARS:
            raise IRevNetError(f"--budget is {len(text)} characters long; a budget is at most two short terms, "
                               f"e.g. 'agreement>=0.999,logits<=0.02'")
        bounds: dict[str, float] = {}
        for term in text.split(","):
            m = _TERM.match(term)
            if not m or m[2] != _DIRECTION[m[1]]:
                raise IRevNetError(f"--budget {term.strip()[:40]!r}: write agreement>=A (a share, 0 to 1) and/or "
                                   f"logits<=L (rel. L2), comma-separated, e.g. --budget 'agreement>=0.999'")
            value = float(m[3])
            if m[1] in bounds:
                raise IRevNetError(f"--budget bounds {m[1]} twice; give each bound once")
            if not math.isfinite(value) or (m[1] == AGREEMENT and not 0.0 <= value <= 1.0):
                raise IRevNetError(f"--budget {m[1]} {m[2]} {m[3]}: agreement is a share from 0 to 1, logits a finite rel. L2")
            bounds[m[1]] = value
        return cls(**bounds)

    def met(self, agreement: float, logits: float) -> bool:
        return (self.agreement is None or agreement >= self.agreement) and (self.logits is None or logits <= self.logits)

    def margin(self, agreement: float, logits: float, images: int) -> float:
        """How far figures are past the budget, relative to each bound (the largest over the bounds
        given): at most 0 where the budget is met, above 0 where it is missed. `1 - agreement` is
        measured against the share of flips allowed, or one image's where the bound allows none.
        What the climb interpolates between plans (search.climb)."""
        terms = []
        if self.agreement is not None:
            allowed = 1.0 - self.agreement
            terms.append((1.0 - agreement - allowed) / max(allowed, 1.0 / max(images, 1)))
        if self.logits is not None:
            terms.append((logits - self.logits) / max(self.logits, np.finfo(np.float64).tiny))
        m = max(terms, default=0.0)
        return min(m, 0.0) if self.met(agreement, logits) else max(m, np.finfo(np.float64).eps)

    def __str__(self) -> str:
        terms = [f"agreement>={self.agreement:g}" if self.agreement is not None else None,
                 f"logits<={self.logits:g}" if self.logits is not None else None]
        return ",".join(t for t in terms if t)

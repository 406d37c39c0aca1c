"""Precision per block under an accuracy budget: the fastest plan that still agrees with PyTorch.

Uses the exporter's steps (trace once, calibrate once, write a plan's bundle), the whole-dataset
evaluation (agreement with PyTorch fp32 on search and held-out images) and the runtime's bench (each
plan's speed on the target backend).
"""

from .budget import Budget
from .search import Candidate, Measured, PlanSearch, PlanSearcher, export_searched, not_picked, run_export

__all__ = ["Budget", "Candidate", "Measured", "PlanSearch", "PlanSearcher", "export_searched", "not_picked", "run_export"]

"""Precision per block under an accuracy budget: the fastest plan that still agrees with PyTorch.

Uses the exporter's steps (trace once, calibrate once, derive a plan's graphs, write the chosen
plan's bundle), the runtime's backends (each plan's forward graph opened in memory on the target
backend, timed side by side as bench times bundles) and the whole-dataset evaluation (agreement
with PyTorch fp32 on search and held-out images).
"""

from .budget import Budget
from .search import Candidate, Measured, PlanSearch, PlanSearcher, export_searched, not_picked, run_export

__all__ = ["Budget", "Candidate", "Measured", "PlanSearch", "PlanSearcher", "export_searched", "not_picked", "run_export"]

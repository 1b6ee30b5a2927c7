"""Evaluation harness (``tessera eval``): BM25, MiniLM and multi-vector models on BEIR folders."""

from tessera.eval.harness import EvalError, evaluate
from tessera.eval.methods import MethodError, available_methods
from tessera.eval.metrics import MEASURES, evaluate_run

__all__ = ["MEASURES", "EvalError", "MethodError", "available_methods", "evaluate", "evaluate_run"]

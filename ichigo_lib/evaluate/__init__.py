"""Evaluation: multiple-choice knowledge (lm-evaluation-harness)."""

from ichigo_lib.evaluate import mc

__all__ = ["mc"]

"""Evaluation: multiple-choice knowledge (lm-evaluation-harness)."""

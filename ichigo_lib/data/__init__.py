"""Synthetic data: sharded text -> speech -> tokens pipeline, phase datasets, inaudible input."""

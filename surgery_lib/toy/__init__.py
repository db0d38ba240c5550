"""Toy data for training and evaluating a small CLIP: real photo cut-outs pasted on real backgrounds."""

"""Evaluation: metrics, segmentation protocols, the paper's analyses, set measurements and the
resumable evaluation runner."""

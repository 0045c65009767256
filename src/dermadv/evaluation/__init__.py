"""Evaluation: classification metrics, paired tests, imperceptibility, the paper's attack table."""

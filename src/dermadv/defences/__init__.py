"""Defences and their honest evaluation: input transforms, randomized smoothing, detection, robustness cards."""

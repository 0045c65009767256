"""Classifiers with normalisation inside, and safetensors checkpoints."""

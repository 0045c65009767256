"""Attacks on [0, 1] images: one interface, one registry."""

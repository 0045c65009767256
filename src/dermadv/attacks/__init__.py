"""Attacks on [0, 1] images: one interface, one registry. Importing the package registers every attack."""

from dermadv.attacks import art, generator, gradient, natural, pixel, universal  # noqa: F401

"""Attacks on [0, 1] images: one interface, one registry. Importing the package registers every attack."""

from dermadv.attacks import (  # noqa: F401
    art,
    artefacts,
    decision,
    generator,
    gradient,
    natural,
    pixel,
    reliable,
    simba,
    square,
    transfer,
    universal,
)

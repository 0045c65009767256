"""Observer study: can people see the perturbations? Study design, web app, storage and analysis."""

from dermadv.observer.study import (
    Invitation,
    KeyEntry,
    Study,
    create_study,
    invite_observer,
    load_answer_key,
    load_study,
)

__all__ = [
    "Invitation",
    "KeyEntry",
    "Study",
    "create_study",
    "invite_observer",
    "load_answer_key",
    "load_study",
]

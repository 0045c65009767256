"""The published figures dermadv reproduces: Allyn et al. 2020, Medicine 99(50):e23568 (PMC7738012).

One place for the paper's numbers, used by ``reproduce``'s table, the report, its figures and the audit: no other
module types them. Measures the paper does not report say so.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_REPORTED = "not reported"
#: how the report's tables name the paper (the column ``paper (Allyn et al. 2020)``)
CITATION = "Allyn et al. 2020"
#: the citation in full, as the report's header gives it
REFERENCE = f"{CITATION} (Medicine 99(50):e23568)"


@dataclass(frozen=True)
class PaperFigure:
    """One published figure as printed: its estimate and, where the paper gives one, its 95% interval."""

    estimate: str
    interval: str | None = None

    def __str__(self) -> str:
        return f"{self.estimate} ({self.interval})" if self.interval else self.estimate


ACCURACY_CLEAN = PaperFigure("84%", "82–86")
ACCURACY_ADV = PaperFigure("67%", "65–69")
MCNEMAR_P = PaperFigure("P < .0001")
FOOLING_RATIO = PaperFigure("100%")  # for every class
OBSERVER_SENSITIVITY = PaperFigure("58.3%", "45.9–70.8")
OBSERVER_SPECIFICITY = PaperFigure("42.5%", "27.2–57.8")
OBSERVER_KAPPA = PaperFigure("−0.22", "−0.49 to −0.04")
ARCH = "DenseNet-201, ImageNet-pretrained"
TARGET = "nv (melanocytic nevus)"

#: the fooling ratio as the paper states it
FOOLING_RATIO_EVERY_CLASS = f"{FOOLING_RATIO} for every class"
#: the observer study in one line (the paper table's row while a study has no answers yet)
OBSERVER_STUDY = (
    f"sensitivity {OBSERVER_SENSITIVITY.estimate}, specificity {OBSERVER_SPECIFICITY.estimate}, "
    f"kappa {OBSERVER_KAPPA.estimate}"
)

#: the paper's column of the table measure | paper | this run, by measure key
PAPER: dict[str, str] = {
    "accuracy_clean": str(ACCURACY_CLEAN),
    "accuracy_adv": str(ACCURACY_ADV),
    "mcnemar_p": str(MCNEMAR_P),
    "fooling_ratio": str(FOOLING_RATIO),  # for every class
    "worst_class_fooling_ratio": str(FOOLING_RATIO),
    "observer_sensitivity": str(OBSERVER_SENSITIVITY),
    "observer_specificity": str(OBSERVER_SPECIFICITY),
    "observer_kappa": str(OBSERVER_KAPPA),
    "observer_study": OBSERVER_STUDY,
    "arch": ARCH,
    "image_size": NOT_REPORTED,
    "eps": NOT_REPORTED,
    "perturbation_size": NOT_REPORTED,
    "split": "train/test, method not reported",
    "fit_on": "the test images (the ones attacked)",
    "target": TARGET,
}


def paper_value(key: str) -> str:
    """The paper's column for the measure ``key``; :data:`NOT_REPORTED` for a measure the paper does not give."""
    return PAPER.get(key, NOT_REPORTED)

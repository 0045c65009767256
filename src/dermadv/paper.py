"""The published figures dermadv reproduces: Allyn et al. 2020, Medicine 99(50):e23568 (PMC7738012).

One place for the paper's numbers, used by ``reproduce``'s table and the report. Measures the paper
does not report say so.
"""

from __future__ import annotations

NOT_REPORTED = "not reported"

PAPER: dict[str, str] = {
    "accuracy_clean": "84% (82–86)",
    "accuracy_adv": "67% (65–69)",
    "mcnemar_p": "P < .0001",
    "fooling_ratio": "100%",  # for every class
    "worst_class_fooling_ratio": "100%",
    "observer_sensitivity": "58.3% (45.9–70.8)",
    "observer_specificity": "42.5% (27.2–57.8)",
    "observer_kappa": "−0.22 (−0.49 to −0.04)",
    "observer_study": "sensitivity 58.3%, specificity 42.5%, kappa −0.22",
    "arch": "DenseNet-201, ImageNet-pretrained",
    "image_size": NOT_REPORTED,
    "eps": NOT_REPORTED,
    "perturbation_size": NOT_REPORTED,
    "split": "train/test, method not reported",
    "fit_on": "the test images (the ones attacked)",
    "target": "nv (melanocytic nevus)",
}

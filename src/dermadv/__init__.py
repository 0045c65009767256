"""dermadv: audit dermatoscopic image classifiers against adversarial attacks."""

__version__ = "0.1.0"

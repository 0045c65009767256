"""Entry point for ``python -m dermadv`` (and ``torchrun -m dermadv``)."""

from dermadv.cli import main

if __name__ == "__main__":
    main()

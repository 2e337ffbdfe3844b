"""`python -m posformer.training` / `accelerate launch -m posformer.training`: see `train.py`."""

import sys

from .train import TrainingDivergedError, main


def cli() -> None:
    """Console entry point `posformer-train`: a diverged run exits with its message and status 1."""
    try:
        main()
    except TrainingDivergedError as error:
        sys.exit(f"posformer-train: {error}")


if __name__ == "__main__":
    cli()

"""`python -m posformer.training` / `accelerate launch -m posformer.training`: see `train.py`."""

import signal
import sys

from .train import TrainingDivergedError, TrainingStoppedError, main


def cli() -> None:
    """Console entry point `posformer-train`: a diverged run exits with its message and status 1; a run stopped
    by SIGTERM (after its checkpoint) with its message and status 143, as a process the signal ended."""
    try:
        main()
    except TrainingDivergedError as error:
        sys.exit(f"posformer-train: {error}")
    except TrainingStoppedError as error:
        print(f"posformer-train: {error}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    cli()

"""`python -m posformer.training` / `accelerate launch -m posformer.training`: `posformer-train` (see `train.py`)."""

from .train import cli

if __name__ == "__main__":
    cli()

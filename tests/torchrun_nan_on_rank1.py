"""A torchrun worker for tests/test_distributed.py: ``medseg`` in which rank 1 alone sees a
non-finite training loss (rank 0's steps are real and finite, so it goes on to the epoch's
collectives). No loss of real data turns NaN on one rank only and deterministically, hence the
patch; it replaces nothing but the loss value rank 1 reports."""

import os

import medseg.training as training

_real_step = training.train_step


def _step(*args, **kwargs) -> float:
    loss = _real_step(*args, **kwargs)
    return float("nan") if os.environ.get("RANK") == "1" else loss


training.train_step = _step

if __name__ == "__main__":
    from medseg.cli import main

    main()

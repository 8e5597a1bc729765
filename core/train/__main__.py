"""`python -m core.train ...` (and `torchrun ... -m core.train ...`): the training CLI."""

from core.train.cli import main

main()

"""``python -m autoprune``: the command line, as torchrun starts it (``torchrun --nproc-per-node N -m autoprune``)."""

from autoprune.cli import main

main()

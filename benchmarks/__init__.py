"""Benchmarks of lossmix_ext against the eager PyTorch reference and ``torch.compile``.

``python -m benchmarks --help`` for the command line; :func:`run` is the same in-process.
Layout: :mod:`.cases` (ops, shapes, inputs, byte models, providers), :mod:`.timing` (the
interleaved timing loop, memory), :mod:`.traffic` (deterministic byte count of eager code),
:mod:`.report` (table, CSV, plots), :mod:`.harness` (the loop tying them together).
"""
from .cases import OPS, Provider  # noqa: F401
from .harness import run  # noqa: F401

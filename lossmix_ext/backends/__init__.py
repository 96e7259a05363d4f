"""Backend implementations of the ops declared in :mod:`lossmix_ext._ops`.

One module per backend: ``torch`` (the pure-PyTorch default, built from the reference),
``triton`` (GPU, Triton), ``cuda`` (GPU, CUDA C++ extension), ``cpu`` (native C++ extension).
Modules are imported lazily by :mod:`lossmix_ext._backend`.
"""

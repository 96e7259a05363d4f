"""Assert that the installed lossmix_ext was built with its CUDA kernels and that every op has a
kernel for CUDA tensors in the dispatcher; CI runs it after the CUDA build (a CUDA build of torch
on a machine without a GPU)::

    python tools/check_cuda_build.py

Prints one line per op and exits 1 when something is missing.
"""
from __future__ import annotations

import sys

import torch

import lossmix_ext  # noqa: F401  (registers the ops)
from lossmix_ext import _ops

# every op of the lossmix_ext namespace, and the CUDA functions of lossmix_ext._C
OPS = ("seesaw_fwd", "seesaw_bwd", "count_labels_", "seesaw_count_", "seesaw_loss", "lossmix_reduce", "mix_images",
       "mix_images_backward", "mix_images_")
CUDA_FUNCTIONS = ("seesaw_fwd_cuda", "seesaw_fwd_inplace_cuda", "seesaw_bwd_cuda", "mix_images_cuda",
                  "mix_images_backward_cuda", "mix_images_inplace_cuda", "device_assert")


def main() -> int:
    problems = []
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), lossmix_ext from {lossmix_ext.__file__}")
    native = _ops._native
    if native is None:
        problems.append(f"lossmix_ext._C is not loaded: {_ops.NATIVE_IMPORT_ERROR}")
    elif not getattr(native, "with_cuda", False):
        problems.append("lossmix_ext._C was built without its CUDA kernels (with_cuda is False)")
    else:
        print("lossmix_ext._C.with_cuda: True")
        missing = [f for f in CUDA_FUNCTIONS if not hasattr(native, f)]
        if missing:
            problems.append(f"lossmix_ext._C lacks {missing}")
    for op in OPS:
        name = f"lossmix_ext::{op}"
        try:
            ok = torch._C._dispatch_has_computed_kernel_for_dispatch_key(name, "CUDA")
        except RuntimeError as exc:  # not registered at all
            ok, why = False, str(exc).splitlines()[0]
        else:
            why = "no kernel for the CUDA dispatch key"
        print(f"  {name:<34} {'CUDA kernel' if ok else 'MISSING: ' + why}")
        if not ok:
            problems.append(f"{name}: {why}")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print("ok: CUDA build complete" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared test set-up.

Without a GPU the Triton kernels run under the Triton interpreter: ``TRITON_INTERPRET=1``
must be set before triton is first imported, so it is set here, before any test module
imports lossmix_ext. Tests marked ``gpu`` are skipped when no CUDA device is present.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_pending_cuda_error():
    """A test that leaves a CUDA error pending (a device-side assert of a value check that it
    expected to raise synchronously) fails itself, instead of breaking the CUDA context for
    every later test in the process. Nothing to do without CUDA."""
    yield
    if HAS_CUDA and torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except RuntimeError as exc:  # pragma: no cover (needs a GPU)
            pytest.fail(f"the test left a CUDA error pending (a device-side assert?): {exc}")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests (OpenMP threads waiting on a busy
    machine, e.g. beside a child process, make each small op many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

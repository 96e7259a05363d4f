"""Build script. The Python package always installs; the native extension ``lossmix_ext._C``
(csrc/) is optional and built with torch.utils.cpp_extension + ninja when possible.

Environment:
  LOSSMIX_EXT_NO_NATIVE=1   skip the native extension entirely
  FORCE_CUDA=1              build the CUDA sources even when no GPU is visible (fail if impossible)
  TORCH_CUDA_ARCH_LIST      CUDA archs (default "8.0;9.0+PTX" when no GPU is visible)
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[lossmix_ext setup] {msg}", file=sys.stderr)


def native_extensions():
    """Return (ext_modules, cmdclass) for the native extension, or ([], {}) with a reason logged."""
    if os.environ.get("LOSSMIX_EXT_NO_NATIVE", "0") == "1":
        _log("LOSSMIX_EXT_NO_NATIVE=1: skipping the native extension")
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not cpp:
        _log("no C++ sources in csrc/: skipping the native extension")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing at build time
        _log(f"torch is not importable ({exc}); install torch first and use --no-build-isolation. "
             "Skipping the native extension")
        return [], {}
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = bool(cu) and CUDA_HOME is not None and (torch.version.cuda is not None) and (
        torch.cuda.is_available() or force_cuda)
    if force_cuda and not with_cuda:
        raise RuntimeError("FORCE_CUDA=1 but torch has no CUDA support or no CUDA toolkit was found")
    if with_cuda and not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    cxx = ["-O3", "-std=c++17"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_compile_args={"cxx": cxx})
    if with_cuda:
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--use_fast_math", "-std=c++17"]
        ext = CUDAExtension("lossmix_ext._C", cpp + cu, **kwargs)
        _log(f"building lossmix_ext._C with CPU and CUDA kernels ({len(cpp)} C++ + {len(cu)} CUDA sources)")
    else:
        why = ("no CUDA sources" if not cu else "torch has no CUDA support" if torch.version.cuda is None
               else "no CUDA toolkit found" if CUDA_HOME is None else "no GPU visible (FORCE_CUDA=1 to insist)")
        _log(f"building lossmix_ext._C with CPU kernels only; CUDA kernels skipped: {why}")
        ext = CppExtension("lossmix_ext._C", cpp, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Build script. The Python package always installs; the native extension ``lossmix_ext._C``
(csrc/) is optional and built with torch.utils.cpp_extension + ninja when possible.

Environment:
  LOSSMIX_EXT_NO_NATIVE=1   skip the native extension entirely
  FORCE_CUDA=1              build the CUDA sources even when no GPU is visible (fail if impossible)
  TORCH_CUDA_ARCH_LIST      CUDA archs (default "8.0;9.0+PTX" when no GPU is visible)

  LOSSMIX_EXT_REQUIRE_NATIVE=1  fail the install when the extension does not build (by default a
                            failed or impossible build is reported and the package installs without it)

Layout of csrc/: ``lossmix_math.h`` (kernel maths shared by CPU and CUDA), ``module.cpp`` (the
Python module), ``register.cpp`` (the op schemas and device kernels in the dispatcher),
``autograd/`` (autograd kernels), ``cpu/`` (CPU kernels + torch glue, always built), ``cuda/`` (``.cu`` kernels in
plain CUDA and the ATen glue ``ops_cuda.cpp``, built only with CUDA). The CPU kernels are
compiled twice, baseline and AVX2+FMA (selected at run time), never with -march=native.
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[lossmix_ext setup] {msg}", file=sys.stderr)


def _sources(*patterns):
    out = []
    for pat in patterns:
        out += sorted(glob.glob(os.path.join("csrc", pat)))
    return out


def _openmp_flags(torch):
    """``-fopenmp`` when torch's intra-op parallelism is OpenMP and the compiler supports it, so
    that at::parallel_for in the glue runs in torch's OpenMP thread pool (libgomp is already
    loaded by torch under the same soname). Else none: the kernels then run on one thread."""
    if sys.platform == "win32":
        return ["/openmp"], []
    try:
        info = torch.__config__.parallel_info()
    except Exception:  # pragma: no cover
        info = ""
    if "parallel backend: OpenMP" not in info:
        _log("torch does not use OpenMP for intra-op parallelism: CPU kernels will run single-threaded")
        return [], []
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0]) is None:
        return [], []
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run(cxx.split() + ["-fopenmp", src, "-o", os.path.join(d, "a.out")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    if not ok:
        _log(f"{cxx} cannot build OpenMP code: CPU kernels will run single-threaded")
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def native_extensions():
    """Return (ext_modules, cmdclass) for the native extension, or ([], {}) with a reason logged."""
    if os.environ.get("LOSSMIX_EXT_NO_NATIVE", "0") == "1":
        _log("LOSSMIX_EXT_NO_NATIVE=1: skipping the native extension")
        return [], {}
    cpp = _sources("*.cpp", os.path.join("cpu", "*.cpp"), os.path.join("autograd", "*.cpp"))
    cu = _sources(os.path.join("cuda", "*.cu"))
    cuda_glue = _sources(os.path.join("cuda", "*.cpp"))
    if not cpp:
        _log("no C++ sources in csrc/: skipping the native extension")
        return [], {}
    require = os.environ.get("LOSSMIX_EXT_REQUIRE_NATIVE", "0") == "1"
    cxx_compiler = os.environ.get("CXX", "cl" if sys.platform == "win32" else "c++").split()[0]
    if shutil.which(cxx_compiler) is None:
        msg = f"no C++ compiler ({cxx_compiler!r} not found; set CXX)"
        if require:
            raise RuntimeError(f"LOSSMIX_EXT_REQUIRE_NATIVE=1 but {msg}")
        _log(f"{msg}: skipping the native extension")
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
    if sys.platform == "win32":
        cxx = ["/O2"]
    else:
        cxx = ["-O3", "-g0", "-Wno-psabi"]  # no -march: the AVX2 kernels are selected at run time
    omp_cflags, omp_lflags = _openmp_flags(torch)
    cxx += omp_cflags
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_compile_args={"cxx": cxx},
                  extra_link_args=omp_lflags)
    isa = "baseline + AVX2/FMA (run-time choice)" if platform.machine().lower() in ("x86_64", "amd64") else "baseline"
    threads = "OpenMP" if omp_cflags else "single-threaded"
    if with_cuda:
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--use_fast_math"]
        kwargs["define_macros"] = [("LOSSMIX_WITH_CUDA", "1")]
        ext = CUDAExtension("lossmix_ext._C", cpp + cuda_glue + cu, **kwargs)
        _log(f"building lossmix_ext._C with CPU kernels ({isa}, {threads}) and CUDA kernels "
             f"({len(cu)} CUDA sources, archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')})")
    else:
        why = ("no CUDA sources" if not cu else "torch has no CUDA support" if torch.version.cuda is None
               else "no CUDA toolkit found" if CUDA_HOME is None else "no GPU visible (FORCE_CUDA=1 to insist)")
        _log(f"building lossmix_ext._C with CPU kernels only ({isa}, {threads}); CUDA kernels skipped: {why}")
        ext = CppExtension("lossmix_ext._C", cpp, **kwargs)
    base = BuildExtension.with_options(use_ninja=True)
    insist = require or force_cuda

    class OptionalBuild(base):
        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as exc:
                if insist:
                    raise
                _log(f"building {extension.name} FAILED ({type(exc).__name__}: {exc}); installing without it "
                     "(the torch and triton backends still work; LOSSMIX_EXT_REQUIRE_NATIVE=1 makes this an error)")

    return [ext], {"build_ext": OptionalBuild}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

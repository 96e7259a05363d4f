"""Build script. The Python package always installs; the native extension ``lossmix_ext._C``
(csrc/) is optional and built with torch.utils.cpp_extension + ninja when possible.

Environment:
  LOSSMIX_EXT_NO_NATIVE=1   skip the native extension entirely
  FORCE_CUDA=1              build the CUDA sources even when no GPU is visible (fail if impossible,
                            torch missing at build time included)
  MAX_JOBS                  parallel compile jobs (default: every core; also without ninja)
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


def _find_cuda_home():
    """The CUDA toolkit's root: CUDA_HOME / CUDA_PATH, else asked of the ``nvcc`` on PATH (which
    may be a wrapper script, e.g. /usr/local/bin/nvcc exec'ing the real one: torch would then
    guess /usr/local and the glue would not find cuda_runtime.h), else /usr/local/cuda."""
    def ok(home):
        return home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h"))

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if ok(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        try:
            with tempfile.TemporaryDirectory() as d:
                src = os.path.join(d, "e.cu")
                open(src, "w").close()
                out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(d, "e.o")],
                                     capture_output=True, text=True, timeout=120)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    home = os.path.normpath(line.split("TOP=", 1)[1].strip().strip('"'))
                    if ok(home):
                        return home
        except (OSError, subprocess.SubprocessError):
            pass
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if ok(home):
            return home
    return "/usr/local/cuda" if ok("/usr/local/cuda") else None


BUILD_INFO = os.path.join(ROOT, "lossmix_ext", "_build_info.json")


def _write_build_info(**info):
    """What the build did (read by lossmix_ext.backend_status to say why CUDA kernels are missing)."""
    import json
    try:
        with open(BUILD_INFO, "w") as f:
            json.dump(info, f)
    except OSError:
        pass


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
    if "CUDA_HOME" not in os.environ:  # torch.utils.cpp_extension reads it when imported
        home = _find_cuda_home()
        if home is not None:
            os.environ["CUDA_HOME"] = home
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing at build time
        msg = f"torch is not importable ({exc}); install torch first and use --no-build-isolation"
        if require or force_cuda:
            raise RuntimeError(f"{'FORCE_CUDA=1' if force_cuda else 'LOSSMIX_EXT_REQUIRE_NATIVE=1'} but {msg}")
        _log(f"{msg}. Skipping the native extension")
        return [], {}
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
    cpu_ext = CppExtension("lossmix_ext._C", cpp, **kwargs)
    if with_cuda:
        cuda_kwargs = dict(kwargs, extra_compile_args=dict(kwargs["extra_compile_args"], nvcc=["-O3", "--use_fast_math"]),
                           define_macros=[("LOSSMIX_WITH_CUDA", "1")])
        ext = CUDAExtension("lossmix_ext._C", cpp + cuda_glue + cu, **cuda_kwargs)
        _log(f"building lossmix_ext._C with CPU kernels ({isa}, {threads}) and CUDA kernels "
             f"({len(cu)} CUDA sources, archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}, "
             f"CUDA_HOME {CUDA_HOME})")
        no_cuda_reason = None
    else:
        no_cuda_reason = ("no CUDA sources" if not cu else "torch has no CUDA support" if torch.version.cuda is None
                          else "no CUDA toolkit found" if CUDA_HOME is None
                          else "no GPU visible at build time (FORCE_CUDA=1 to insist)")
        _log(f"building lossmix_ext._C with CPU kernels only ({isa}, {threads}); CUDA kernels skipped: "
             f"{no_cuda_reason}")
        ext = cpu_ext
    base = BuildExtension.with_options(use_ninja=True)
    insist = require or force_cuda

    class OptionalBuild(base):
        """A failed CUDA build (a compile error, or torch's check of the toolkit against its own CUDA
        version, which raises in build_extensions) falls back to the CPU kernels, so it never
        costs them; a failed CPU build installs the package without the extension. Either is an
        error with LOSSMIX_EXT_REQUIRE_NATIVE=1 / FORCE_CUDA=1. The outcome is recorded for
        lossmix_ext.backend_status()."""

        def finalize_options(self):
            super().finalize_options()
            # pip builds every install in a new temporary folder, which would compile every
            # source again (minutes): keep the objects in the checkout's build/ (ignored by
            # git), one folder per interpreter and torch, and let ninja rebuild only what
            # changed; the main-job and test commands of the README then compile once.
            if os.environ.get("LOSSMIX_EXT_FRESH_BUILD") != "1":
                self.build_temp = os.path.join(ROOT, "build", "objects-" + _build_tag(cuda=ext is not cpu_ext))

        def build_extensions(self):
            if not self.use_ninja:  # torch found no ninja: compile the sources in parallel anyway
                _compile_in_parallel(self.compiler, _jobs())
            cuda_error = no_cuda_reason
            if self.extensions and self.extensions[0] is ext and ext is not cpu_ext:
                try:
                    super().build_extensions()
                    _write_build_info(cuda="built")
                    return
                except Exception as exc:
                    if insist:
                        raise
                    cuda_error = f"the CUDA build failed ({type(exc).__name__}: {str(exc)[:500]})"
                    _log(f"{cuda_error}; building the CPU kernels alone")
                    self.extensions = [cpu_ext]
            try:
                super().build_extensions()
            except Exception as exc:
                if require:
                    raise
                _log(f"building lossmix_ext._C FAILED ({type(exc).__name__}: {exc}); installing without it "
                     "(the torch and triton backends still work; LOSSMIX_EXT_REQUIRE_NATIVE=1 makes this an error)")
                _write_build_info(cuda=cuda_error, native=f"{type(exc).__name__}: {str(exc)[:500]}")
                return
            _write_build_info(cuda=cuda_error)

    return [ext], {"build_ext": OptionalBuild}


def _jobs() -> int:
    """Parallel compile jobs: MAX_JOBS (torch's own variable), else every core."""
    try:
        return max(1, int(os.environ.get("MAX_JOBS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def _compile_in_parallel(compiler, jobs: int) -> None:
    """Without ninja, setuptools compiles one source after the other (about 10 minutes for this
    extension on one core). Replace the compiler's ``compile`` loop by one that runs the C++
    sources ``jobs`` at a time. CUDA sources still go one at a time, after them: torch's
    per-source wrapper swaps the compiler executable to nvcc and back on the shared compiler
    object, which is not safe to do from several threads."""
    from concurrent.futures import ThreadPoolExecutor

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        todo = [(obj,) + tuple(build[obj]) for obj in objects if obj in build]

        def one(job):
            obj, src, ext = job
            compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        host = [j for j in todo if j[2] != ".cu"]
        _log(f"ninja not found: compiling {len(host)} C++ sources {jobs} at a time, then {len(todo) - len(host)} "
             "CUDA sources one at a time")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, host))  # re-raises the first compile error
        for job in todo:
            if job[2] == ".cu":
                one(job)
        return objects

    compiler.compile = compile


def _build_tag(cuda: bool) -> str:
    import torch
    return f"{sys.implementation.cache_tag}-torch{torch.__version__}-{'cuda' if cuda else 'cpu'}".replace("+", "_")


if __name__ == "__main__":  # (pip's build backend runs this file as __main__ too; tests import its helpers)
    ext_modules, cmdclass = native_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Ahead-of-time compilation of Triton kernels for a given GPU target, without a GPU.

Each Triton kernel module of ``lossmix_ext.backends.triton`` exposes ``aot_configs()``: a list
of ``(name, jit_fn, signature, constexprs)`` tuples, one per kernel configuration its
dispatch code actually launches (dtype × block choice). :func:`compile_for` builds one for
``sm_{cc}`` and returns its PTX/cubin and, when ``cuobjdump`` is on PATH, the register and
local-memory (spill) sizes read from the cubin.
"""
from __future__ import annotations

import os
import re
import subprocess
import shutil
import tempfile


def compile_for(jit_fn, signature, constexprs, cc: int, num_warps: int = 4):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})


def resource_usage(compiled) -> dict:
    """{'registers', 'stack_bytes', 'local_bytes', 'shared_bytes'} from the cubin (empty if unknown)."""
    tool = shutil.which("cuobjdump")
    if tool is None:
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        tool = bundled if os.path.exists(bundled) else None
    cubin = compiled.asm.get("cubin")
    if tool is None or cubin is None:
        return {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    usage = {}
    m = re.search(r"REG:(\d+)", out)
    if m:
        usage["registers"] = int(m.group(1))
    for key, name in (("STACK", "stack_bytes"), ("LOCAL", "local_bytes"), ("SHARED", "shared_bytes")):
        m = re.search(key + r":(\d+)", out)
        if m:
            usage[name] = int(m.group(1))
    return usage


_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import importlib
from triton_aot import compile_for, resource_usage
mod = importlib.import_module(sys.argv[2])
cc, wanted = int(sys.argv[3]), sys.argv[4]
names = set(wanted.split(",")) if wanted else None
warps = mod.aot_num_warps() if hasattr(mod, "aot_num_warps") else {}
for name, fn, sig, consts in mod.aot_configs():
    if names is None or name in names:
        nw = warps.get(name, getattr(mod, "NUM_WARPS", 4))
        k = compile_for(fn, sig, consts, cc, num_warps=nw)
        usage = resource_usage(k)
        usage["cubin_bytes"] = len(k.asm.get("cubin") or b"")
        print(json.dumps({"name": name, "cc": cc, "num_warps": nw, **usage}), flush=True)
"""


def compile_module_configs(module: str, cc: int, names=None, timeout: int = 900) -> list:
    """Compile ``module.aot_configs()`` (all, or those in ``names``) for ``sm_{cc}`` in a fresh
    process without ``TRITON_INTERPRET`` (under the interpreter ``triton.jit`` gives interpreted
    functions that cannot be compiled). Each kernel gets the ``num_warps`` its dispatch uses
    (``module.aot_num_warps()`` or ``module.NUM_WARPS``). Returns one dict per kernel:
    name, cc, num_warps, cubin_bytes and the :func:`resource_usage` figures."""
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, here, module, str(cc), ",".join(names or [])],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compile of {module} for sm_{cc} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

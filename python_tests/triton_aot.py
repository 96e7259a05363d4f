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
import shutil
import subprocess
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

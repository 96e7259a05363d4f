"""Child-process environments of a barer machine: Python modules that cannot be imported and
command-line tools that fail as a missing one would (for the tests of what the device check
and setup.py do without hypothesis, numpy, ninja or torch)."""
from __future__ import annotations

import os
from typing import Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKER = '''import sys
HIDDEN = {hidden!r}
class _Hide:
    # every finder of sys.meta_path, wrapped: it finds nothing under the hidden names, which
    # are then as absent as a package that is not installed (importlib.util.find_spec gives None)
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find is not None else None
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def bare_env(tmp_path, modules: Iterable[str] = ("hypothesis",), executables: Iterable[str] = ("ninja",),
             **extra: str) -> dict:
    """The environment of a child process in which ``modules`` cannot be imported (a
    ``sitecustomize`` on PYTHONPATH puts a finder first that refuses them) and ``executables``
    fail as a missing tool would (a stand-in that exits 127, first on PATH); ``extra`` adds
    variables. The checkout is on PYTHONPATH. With hidden modules, pytest loads no plugin
    through entry points either (a plugin of a hidden package would fail to load)."""
    site, bin_ = tmp_path / "site", tmp_path / "bin"
    site.mkdir(exist_ok=True)
    bin_.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(hidden=tuple(modules)))
    for name in executables:
        exe = bin_ / name
        exe.write_text("#!/bin/sh\necho \"$0: hidden by the test\" >&2\nexit 127\n")
        exe.chmod(0o755)
    env = dict(os.environ, **extra)
    if modules:  # nor any pytest plugin (hypothesis ships one, loaded through its entry point)
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(site), ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PATH"] = os.pathsep.join([str(bin_), env.get("PATH", "")])
    return env

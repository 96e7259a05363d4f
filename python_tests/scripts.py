"""Load a script of the repository (examples/...) as a module, for tests of its functions."""
import contextlib
import importlib.util
import sys
from pathlib import Path


@contextlib.contextmanager
def script_module(path: Path, name: str):
    """The script at ``path`` imported as module ``name``, registered in ``sys.modules`` while in
    use (dataclasses look their module up while the file runs), removed afterwards."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)

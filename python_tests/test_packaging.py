"""Install-time promises that a CPU CI would otherwise never see: the README's set-up commands
and the package's extras never pin triton next to torch (on a Linux GPU machine torch's default
wheel is a CUDA build that pins its own triton, so a second pin cannot resolve), and CI runs
exactly the README's test command."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _pip_commands(text):
    return [m.group(0) for m in re.finditer(r"pip install[^\n`]*", text)]


def test_readme_pins_no_triton_beside_torch():
    cmds = [c for c in _pip_commands(_read("README.md")) if "torch" in c]
    assert cmds, "the README has no set-up command installing torch"
    for cmd in cmds:
        assert not re.search(r"triton\s*[=~<>!]=", cmd), f"triton pinned beside torch: {cmd}"
        assert not re.search(r"torch\s*==", cmd), f"an exact torch pin cannot reuse the machine's torch: {cmd}"


def test_triton_extra_is_not_pinned():
    extra = re.search(r"^triton\s*=\s*\[(.*)\]", _read("pyproject.toml"), re.M)
    assert extra is not None
    for req in re.findall(r'"([^"]+)"', extra.group(1)):
        if req.startswith("triton"):
            spec = req.split(";")[0]
            assert "==" not in spec and "<" not in spec and "~=" not in spec, req
            assert "platform_system" in req  # no triton wheels outside Linux


def test_ci_runs_the_readme_test_command():
    readme = _read("README.md")
    cmd = re.search(r"(python -m pytest [^\n`]*)", readme).group(1).strip()
    assert cmd == "python -m pytest python_tests -q -rs"
    ci_lines = [line.strip() for line in _read(".ci/run").splitlines()]
    assert cmd in ci_lines


def test_every_subpackage_is_packaged():
    """A non-editable install ships only the listed packages: every folder of lossmix_ext with an
    __init__.py must be listed (lossmix_ext.integrations among them)."""
    listed = set(re.findall(r'"(lossmix_ext[\w.]*)"', re.search(r"^packages\s*=\s*\[(.*)\]",
                                                                 _read("pyproject.toml"), re.M).group(1)))
    found = set()
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "lossmix_ext")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found == listed


def test_ci_installs_the_frameworks_without_their_dependencies():
    """Framework packages (timm, torchvision, mm*) go in with --no-deps: pip must never replace
    torch (their requirements would pull a CUDA build)."""
    for line in _read(".ci/run").splitlines():
        if "pip install" in line and re.search(r"\b(timm|torchvision|mmdet|mmpretrain|mmengine|mmcv)", line):
            assert "--no-deps" in line, line

"""Shared by the mmdetection and mmpretrain plug-ins: putting a class in an mmengine registry."""
from __future__ import annotations

from typing import Sequence, Tuple


def register_names(registry, cls, names: Sequence[str], force: bool) -> Tuple[str, ...]:
    """Register ``cls`` in ``registry`` under each of ``names``; a name already taken by another
    class is replaced only with ``force``. Returns the names under which ``registry`` now builds
    ``cls``. Idempotent. (The callers check that ``force`` is a bool before they import their
    framework.)"""
    taken = []
    for name in names:
        current = registry.module_dict.get(name)
        if current is not cls:
            if current is not None and not force:
                continue
            registry.register_module(name=name, force=True, module=cls)
        taken.append(name)
    return tuple(taken)

"""mmdetection 3.x plug-in: the fused Seesaw loss in ``mmdet.registry.MODELS``.

One line in an mmengine config (or ``import lossmix_ext.integrations.mmdet`` before the model
is built)::

    custom_imports = dict(imports=["lossmix_ext.integrations.mmdet"], allow_failed_imports=False)

registers :class:`FusedSeesawLoss` under ``"SeesawLoss"`` — replacing mmdetection's own class,
so existing configs (the LVIS Seesaw configs, ``loss_cls=dict(type="SeesawLoss", ...)``) run
the fused loss unchanged — and under ``"FusedSeesawLoss"``. :class:`FusedSeesawLoss` is
:class:`lossmix_ext.SeesawLoss`: mmdetection 3.3's constructor, ``cum_samples`` buffer (same
state-dict key and shape, so checkpoints load either way), outputs, gradients and counts, and
the methods and flags its bbox heads use (``get_cls_channels``, ``get_activation``,
``get_accuracy``, ``custom_cls_channels`` / ``custom_activation`` / ``custom_accuracy``,
``use_sigmoid``), plus ``backend``, ``inplace_grad``, ``sync_counts`` and the LossMix form
``forward(..., labels_b=..., lam=...)``.

Registration order. mmdetection registers its own class with ``force=False`` when
``mmdet.models`` is imported, which fails if the name is already taken; so :func:`register`
first imports ``mmdet.models`` (registering mmdetection's modules), then registers the fused
class with ``force=True``. ``mmdet.models`` needs mmcv's compiled ops (``mmcv.ops`` →
``mmcv._ext``): with ``mmcv-lite`` it cannot be imported, and neither can mmdetection build any
model, because mmengine's ``Registry.get`` imports ``mmdet.models`` before every look-up until
that succeeds. The fused class is registered all the same; :func:`mmdet_models_status` says why
``mmdet.models`` could not be imported, and a warning says so at registration.

mmdetection is not a dependency of lossmix_ext: it is imported when this module is, and a
missing or broken mmdetection raises an :class:`ImportError` that says what to install.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Optional, Tuple

from ._registry import register_names
from ..seesaw import SeesawLoss as _SeesawLoss

__all__ = ["FusedSeesawLoss", "register", "mmdet_models_status", "NAMES", "REGISTERED"]

#: The names under which :func:`register` puts :class:`FusedSeesawLoss` in ``mmdet.registry.MODELS``.
NAMES: Tuple[str, ...] = ("SeesawLoss", "FusedSeesawLoss")

_INSTALL = ('pip install "mmdet>=3.0,<4" "mmengine>=0.7.1,<1" "mmcv>=2.0.0rc4,<2.2.0" '
            "(mmdet's models need mmcv's compiled ops; mmcv-lite gives the registry only)")

_models_status: Optional[str] = None


class FusedSeesawLoss(_SeesawLoss):
    """mmdetection's ``SeesawLoss`` (``mmdet.models.losses.SeesawLoss``, 3.x) computed by the
    fused op: the same constructor arguments, buffer, outputs and methods, see
    :class:`lossmix_ext.SeesawLoss` (this class adds nothing; it exists so that the registry
    and logs name where the loss came from). Built by ``MODELS.build(dict(type="SeesawLoss", ...))``
    once this module is imported.
    """


def _registry():
    """``mmdet.registry.MODELS``, or an ImportError naming what to install."""
    try:
        registry = importlib.import_module("mmdet.registry")
    except Exception as exc:  # missing mmdet (or mmdet 2.x), missing mmcv / mmengine, version asserts
        raise ImportError(
            f"lossmix_ext.integrations.mmdet needs mmdetection 3.x, which could not be imported "
            f"({type(exc).__name__}: {exc}); install it with: {_INSTALL}", name="mmdet") from exc
    return registry.MODELS


def _import_models() -> str:
    """Import ``mmdet.models`` (registering mmdetection's own modules, its ``SeesawLoss``
    first of all); return ``"imported"`` or the reason it failed."""
    global _models_status
    try:
        importlib.import_module("mmdet.models")
    except Exception as exc:  # mmcv-lite: ModuleNotFoundError 'mmcv._ext'; a broken torchvision: RuntimeError
        _models_status = f"{type(exc).__name__}: {exc}"
    else:
        _models_status = "imported"
    return _models_status


def mmdet_models_status() -> str:
    """``"imported"`` when ``mmdet.models`` (mmdetection's own models and losses) imported at the
    last :func:`register`, else the reason it did not (e.g. ``"ModuleNotFoundError: No module
    named 'mmcv._ext'"`` with mmcv-lite). Until ``mmdet.models`` imports, mmengine's registry
    cannot build any mmdetection model, this loss included."""
    return _models_status if _models_status is not None else "not tried (mmdetection could not be imported)"


def register(force: bool = True) -> Tuple[str, ...]:
    """Register :class:`FusedSeesawLoss` in ``mmdet.registry.MODELS``; return the names under
    which the registry now builds it.

    ``mmdet.models`` is imported first, so that mmdetection's own ``SeesawLoss`` is registered
    before it is replaced (and its later import cannot fail on a taken name). ``force=True``
    (what importing this module does) takes both :data:`NAMES`, replacing mmdetection's class;
    ``force=False`` takes only the names that are free, keeping mmdetection's ``SeesawLoss``
    (then only ``"FusedSeesawLoss"`` builds the fused loss). Idempotent. Raises
    :class:`ImportError` when mmdetection 3.x cannot be imported.
    """
    if not isinstance(force, bool):  # before any framework import
        raise TypeError(f"force must be True or False, got {type(force).__name__}")
    registry = _registry()
    if _import_models() != "imported":
        warnings.warn(
            f"lossmix_ext.integrations.mmdet: 'mmdet.models' could not be imported ({_models_status}), so "
            f"mmdetection's registry cannot build models; FusedSeesawLoss is registered all the same. "
            f"mmdet.models needs mmcv with its compiled ops (not mmcv-lite)", stacklevel=2)
    return register_names(registry, FusedSeesawLoss, NAMES, force)


#: The names registered when this module was imported.
REGISTERED: Tuple[str, ...] = register()

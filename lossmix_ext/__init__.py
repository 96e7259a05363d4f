"""lossmix_ext: fused kernels for Seesaw loss and LossMix (supervision interpolation).

Public API: :func:`seesaw_loss`, :func:`seesaw_loss_mixed`, :func:`count_labels`, :class:`SeesawLoss`,
:func:`mixed_cross_entropy`, :func:`mix_images`, :func:`sample_mix`, :func:`lossmix_reduce`, the
LossMix front end (:class:`LossMix`, :func:`mix_detection`, :func:`domain_mix_plans`),
backend selection (:func:`available_backends`, :func:`backend_status`,
:func:`set_default_backend`, ``LOSSMIX_EXT_BACKEND``) and value-check control
(:func:`set_validation`, :func:`validation`, ``LOSSMIX_EXT_VALIDATE``).
"""
from . import _ops  # noqa: F401  (registers the torch.library ops)
from ._backend import (BackendUnavailableError, available_backends, backend_status,  # noqa: F401
                       set_default_backend)
from ._validation import LossMixAssertionError, get_validation, set_validation, validation  # noqa: F401
from .functional import (count_labels, lossmix_reduce, mix_images, mix_images_, mixed_cross_entropy,  # noqa: F401
                         sample_beta, sample_mix, seesaw_loss, seesaw_loss_mixed, seesaw_module_loss)
from .mix import DetectionMix, DomainMixPlan, LossMix, MixPlan, domain_mix_plans, mix_detection  # noqa: F401
from .seesaw import SeesawLoss  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "SeesawLoss", "seesaw_loss", "seesaw_loss_mixed", "seesaw_module_loss", "count_labels", "mixed_cross_entropy",
    "mix_images", "mix_images_", "sample_mix", "sample_beta", "lossmix_reduce", "available_backends", "backend_status",
    "set_default_backend", "BackendUnavailableError", "LossMixAssertionError", "get_validation", "set_validation", "validation",
    "LossMix", "MixPlan", "mix_detection", "DetectionMix", "domain_mix_plans", "DomainMixPlan",
]

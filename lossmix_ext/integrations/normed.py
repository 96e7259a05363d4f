"""mmdetection's normalized predictor layers, ``NormedLinear`` and ``NormedConv2d``, in plain torch.

The Seesaw recipe predicts the classification activation and the objectness with "a
normalized linear layer": features and weight rows are divided by their L2 norms (to the
power ``power``, plus ``eps``) and the features multiplied by a temperature, so a logit is
``temperature · cos(x, w) + bias`` for ``power = 1``. Same formulas, defaults and operation
order as mmdetection 3.x (``mmdet/models/layers/normed_predictor.py``), so outputs are
bit-identical for the same parameters; the state dict is ``nn.Linear``'s / ``nn.Conv2d``'s
(``weight``, ``bias``), so checkpoints load either way. Needs neither mmdetection nor
torchvision.

mmdetection spells the temperature argument ``tempearture``; both spellings are accepted.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NormedLinear", "NormedConv2d"]


def _positive(x, name: str) -> float:
    if not isinstance(x, Real) or isinstance(x, bool):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not (math.isfinite(float(x)) and float(x) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    return float(x)


def _non_negative(x, name: str) -> float:
    if not isinstance(x, Real) or isinstance(x, bool):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not (math.isfinite(float(x)) and float(x) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def _temperature(temperature, tempearture) -> float:
    if tempearture is not None:  # mmdetection's spelling (configs pass it)
        temperature = tempearture
    return _positive(temperature, "temperature")


class NormedLinear(nn.Linear):
    """mmdetection's ``NormedLinear``: ``F.linear(t · x / (‖x‖^power + eps), w / (‖w_row‖^power + eps), bias)``.

    Args (after ``nn.Linear``'s ``in_features, out_features, bias``):
        temperature: the factor ``t`` of the normalised features (mmdetection: 20).
        power: the power of the norms (mmdetection: 1.0).
        eps: added to the norms (mmdetection: 1e-6).
        tempearture: mmdetection's spelling of ``temperature``; wins when given.

    Initialised as mmdetection's: weight ~ N(0, 0.01²), bias 0.
    """

    def __init__(self, *args, temperature: float = 20.0, power: float = 1.0, eps: float = 1e-6,
                 tempearture: Optional[float] = None, **kwargs) -> None:
        t = _temperature(temperature, tempearture)
        power = _non_negative(power, "power")
        eps = _non_negative(eps, "eps")
        super().__init__(*args, **kwargs)
        self.temperature = t
        self.power = power
        self.eps = eps
        self.init_weights()

    @property
    def tempearture(self) -> float:
        """mmdetection's attribute name for :attr:`temperature`."""
        return self.temperature

    def init_weights(self) -> None:
        nn.init.normal_(self.weight, mean=0, std=0.01)
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}, power={self.power}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        weight_ = self.weight / (self.weight.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        x_ = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        x_ = x_ * self.temperature
        return F.linear(x_, weight_, self.bias)


class NormedConv2d(nn.Conv2d):
    """mmdetection's ``NormedConv2d``: a convolution of ``t · x / (‖x‖_channels^power + eps)`` with
    ``w / (‖w‖^power + eps)``, the weight's norm taken over its input channels per kernel
    position (or, with ``norm_over_kernel=True``, over the whole kernel of each output channel).

    Args (after ``nn.Conv2d``'s): ``temperature`` (20), ``power`` (1.0), ``eps`` (1e-6),
    ``norm_over_kernel`` (False), ``tempearture`` (mmdetection's spelling). Initialised as
    ``nn.Conv2d`` (mmdetection's class adds no initialisation of its own).
    """

    def __init__(self, *args, temperature: float = 20.0, power: float = 1.0, eps: float = 1e-6,
                 norm_over_kernel: bool = False, tempearture: Optional[float] = None, **kwargs) -> None:
        t = _temperature(temperature, tempearture)
        power = _non_negative(power, "power")
        eps = _non_negative(eps, "eps")
        if not isinstance(norm_over_kernel, bool):
            raise TypeError(f"norm_over_kernel must be True or False, got {type(norm_over_kernel).__name__}")
        super().__init__(*args, **kwargs)
        self.temperature = t
        self.power = power
        self.eps = eps
        self.norm_over_kernel = norm_over_kernel

    @property
    def tempearture(self) -> float:
        """mmdetection's attribute name for :attr:`temperature`."""
        return self.temperature

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature}, power={self.power}, eps={self.eps}, "
                f"norm_over_kernel={self.norm_over_kernel}")

    def forward(self, x: Tensor) -> Tensor:
        if not self.norm_over_kernel:
            weight_ = self.weight / (self.weight.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        else:
            weight_ = self.weight / (
                self.weight.view(self.weight.size(0), -1).norm(dim=1, keepdim=True).pow(self.power)[..., None, None]
                + self.eps)
        x_ = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        x_ = x_ * self.temperature
        return self._conv_forward(x_, weight_, self.bias)

"""A minimal layer-sequence model: what the spine compiles before the ONNX / torch frontends exist.

``Sequential([Linear(w, b), Activation("relu"), Linear(...)])`` describes an MLP with float weights;
:func:`quantize_sequential` turns its linear layers into :class:`QuantizedLinear` layers of a format.
"""
import dataclasses

import numpy as np

from lowbit.errors import WeightError

ACTIVATIONS = ("relu", "gelu", "silu")


@dataclasses.dataclass(frozen=True)
class Linear:
    """Float linear layer ``y = x @ weight.T + bias`` with ``weight`` of shape (N, K)."""

    weight: np.ndarray
    bias: object = None
    name: str = ""


@dataclasses.dataclass(frozen=True)
class QuantizedLinear:
    """Quantized linear layer: a QuantizedWeight (N, K) and an optional float bias (N,)."""

    weight: object
    bias: object = None
    name: str = ""

    @property
    def shape(self):
        return self.weight.shape


@dataclasses.dataclass(frozen=True)
class Activation:
    """Elementwise activation: one of ``relu``, ``gelu``, ``silu``."""

    kind: str

    def __post_init__(self):
        if self.kind not in ACTIVATIONS:
            raise WeightError(f"unknown activation {self.kind!r}: choose one of {', '.join(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class Sequential:
    """Layers applied in order to one float32 input ``(M, K)``; M stays dynamic."""

    layers: tuple
    input_name: str = "x"
    output_name: str = "y"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        width = None
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Activation):
                continue
            N, K = layer.weight.shape if isinstance(layer, Linear) else layer.shape
            if width is not None and K != width:
                raise WeightError(f"layer {index} takes K={K} inputs but the layer before gives {width}: "
                                  "consecutive linear layers must chain (N of one = K of the next)")
            width = N

    @property
    def in_features(self):
        first = next(layer for layer in self.layers if not isinstance(layer, Activation))
        return first.weight.shape[1] if isinstance(first, Linear) else first.shape[1]

    def linear_layers(self):
        return [layer for layer in self.layers if not isinstance(layer, Activation)]


def quantize_sequential(model, fmt):
    """Quantize every Linear of ``model`` to ``fmt`` (a format or its name); keep activations."""
    from lowbit.compiler.formats import quantize

    layers = []
    for index, layer in enumerate(model.layers):
        if isinstance(layer, Linear):
            qw = quantize(np.asarray(layer.weight), fmt)
            layers.append(QuantizedLinear(qw, layer.bias, layer.name or f"linear{index}"))
        else:
            layers.append(layer)
    return Sequential(layers, model.input_name, model.output_name)

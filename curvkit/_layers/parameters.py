"""Which parameters sit in which supported layer: the layer map, built once per operator.

A parameter may sit in several layers (weights tied between an embedding and an output head),
a layer may run several times in a pass (each run is a *use*, recorded by :mod:`.recording`),
and a parameter may sit in a module no rule covers (a LayerNorm's weight): the map says which
(:attr:`LayerMap.unsupported`), so that every consumer decides alike what is covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from curvkit._layers.convolution import ConvolutionRule
from curvkit._layers.embedding import EmbeddingRule
from curvkit._layers.linear import LinearRule
from curvkit._layers.rule import LayerRule

RULES: tuple[type[LayerRule], ...] = (LinearRule, ConvolutionRule, EmbeddingRule)
"""One rule per supported layer type."""


def rule_of(module: nn.Module) -> type[LayerRule] | None:
    """The rule for ``module``'s exact type (a subclass may compute something else), or ``None``."""
    for rule in RULES:
        if type(module) in rule.module_types:
            return rule
    return None


@dataclass(frozen=True)
class Use:
    """One call of a layer in a recorded pass.

    Its input, its output (with its graph), and the input's version counter at the call (an
    in-place change later in the pass shows in it).
    """

    inputs: Tensor
    output: Tensor
    version: int


@dataclass
class Layer:
    """A supported layer with a parameter among the operator's, and its uses in the current pass.

    Attributes:
        module: The layer.
        rule: Its rule.
        name: Its path in the model (``''`` for the model itself), for messages.
        indices: ``{'weight': position, 'bias': position}`` of its parameters among the
            operator's (only those that are).
        uses: The calls of the current recorded pass (:func:`.recording.recording`); ``None``
            for a call whose input is not a tensor.
    """

    module: nn.Module
    rule: type[LayerRule]
    name: str
    indices: dict[str, int]
    uses: list[Use | None] = field(default_factory=list)

    @property
    def weight_index(self) -> int | None:
        return self.indices.get("weight")

    @property
    def bias_index(self) -> int | None:
        return self.indices.get("bias")

    def trainable(self) -> list[Tensor]:
        """The layer's own parameters that require grad (frozen ones are constants)."""
        return [tensor for tensor in self.rule.parameters(self.module).values() if tensor.requires_grad]


@dataclass
class LayerMap:
    """The supported layers of a model with a parameter among the operator's, and the rest.

    Attributes:
        layers: Supported layers, in the order of ``model.modules()`` (each module object once).
        unsupported: ``{parameter position: why}`` for parameters in no supported layer, naming
            the module and its parameter (``"'encoder.norm' (LayerNorm): its parameter 'weight'
            has no per-layer rule"``).
    """

    layers: list[Layer]
    unsupported: dict[int, str]

    @property
    def covered(self) -> set[int]:
        """Positions of the parameters that sit in a supported layer."""
        return {index for layer in self.layers for index in layer.indices.values()}

    def covers_all(self, num_tensors: int) -> bool:
        """Whether every one of ``num_tensors`` parameters sits in a supported layer."""
        return not self.unsupported and self.covered == set(range(num_tensors))

    def of(self, module: nn.Module) -> Layer | None:
        """The layer of ``module``, or ``None``."""
        return next((layer for layer in self.layers if layer.module is module), None)


def layer_map(model: nn.Module, tensors: list[Tensor]) -> LayerMap:
    """The :class:`LayerMap` of ``model`` for the parameters ``tensors`` (matched by identity)."""
    position = {id(tensor): index for index, tensor in enumerate(tensors)}
    layers, unsupported = [], {}
    for name, module in model.named_modules():  # each module object once
        own = {key: position[id(value)] for key, value in module._parameters.items() if id(value) in position}
        if not own:
            continue
        rule = rule_of(module)
        reason = "it is no supported layer" if rule is None else rule.refusal(module)
        if reason is None and set(own) <= set(rule.parameters(module)):
            layers.append(Layer(module, rule, name, own))
            continue
        for key, index in own.items():
            unsupported.setdefault(
                index, f"'{name}' ({type(module).__name__}): its parameter '{key}' ({reason or 'no rule'})"
            )
    return LayerMap(layers, unsupported)

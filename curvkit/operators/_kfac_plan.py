r"""Which Kronecker blocks KFAC has, and how each layer use feeds a block's two factors.

A block is the weight of one or more layers (tied weights, joined with its bias where asked), or
a bias. Each block has an *output side* (the rows of its matrix: a weight's ``out``) and an
*input side* (its columns). Every use of a layer in the forward pass contributes *rows*
``r`` (positions, pixels, tokens) for each sample ``n`` and each backpropagated column ``k`` of
the output factor ``S`` (``Λ = S Sᵀ``); the per-sample gradient of the block is
``Σ_r u_{k,n,r} v_{k,n,r}ᵀ`` with ``u`` on the output side and ``v`` on the input side. For a
linear layer or a convolution, ``u = g`` (the output gradient) and ``v = a`` (the input row or
patch, the same for every ``k``); for an embedding seen as the table ``[V, d]``, ``u = e_i``
(one-hot, on the vocabulary side) and ``v = g``.

KFAC-expand (Eschenhagen et al. 2023) drops the products between different rows, samples and
columns and replaces the mean of Kronecker products over the index triples ``i = (k, n, r)`` by
the Kronecker product of means:

.. math::
    \frac{1}{T} \sum_i u_i u_iᵀ ⊗ v_i v_iᵀ \;≈\;
    \Big(\frac{1}{T_G} \sum_i u_i u_iᵀ\Big) ⊗ \Big(\frac{1}{I} \sum_i v_i v_iᵀ\Big),

with ``1/T`` the loss's scale and ``I`` the number of triples. All uses of all layers that hold
the block's weight are concatenated along the row axis (weight sharing is what expand is
about). For a layer alone this is curvlinops' ``G = Σ g gᵀ`` (loss-scaled) and
``A = (1/(N R)) Σ a aᵀ``. KFAC-reduce sums the gradients and averages the inputs over the rows
of a sample (all uses) first, triples ``(k, n)``.

An embedding's vocabulary side is diagonal (token counts; a dense ``V × V`` factor would not
fit for real vocabularies), so an embedding always takes expand; a weight shared between an
embedding and a linear head is laid out as the head's ``[V, d]`` and its vocabulary side is
dense (the head's gradients are dense there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from curvkit._layers.embedding import EmbeddingRule
from curvkit._layers.parameters import Layer, LayerMap


@dataclass
class Holder:
    """A layer that holds a block's parameter, and in which role.

    Attributes:
        layer: The layer.
        transposed: The layer's ``(u, v)`` are the block's ``(input side, output side)``: an
            embedding in a block laid out as a linear head's ``[V, d]``.
    """

    layer: Layer
    transposed: bool = False

    @property
    def is_embedding(self) -> bool:
        return self.layer.rule is EmbeddingRule


@dataclass
class BlockPlan:
    """One Kronecker block of KFAC.

    Attributes:
        params: Positions of its parameters (a weight, a bias, or a weight and its bias joined).
        holders: The layers whose uses feed it.
        bias_only: A bias alone: input side ``[1]``.
        joined: Weight and bias joined: inputs with a 1 appended.
        input_major: The weight's rows are its inputs (an embedding's table ``[V, d]``): the
            input factor is a diagonal of token counts.
    """

    params: tuple[int, ...]
    holders: list[Holder] = field(default_factory=list)
    bias_only: bool = False
    joined: bool = False
    input_major: bool = False

    def output_dim(self, tensors: list[Tensor]) -> int:
        """The output side's dimension (a weight's rows; an input-major table's columns)."""
        weight = tensors[self.params[0]]
        return weight.shape[1] if self.input_major else weight.shape[0]


def block_plans(layer_map: LayerMap, separate_weight_and_bias: bool) -> list[BlockPlan]:
    """The blocks of KFAC for the parameters of ``layer_map``, in the order of the parameters.

    Raises:
        NotImplementedError: For a weight shared between layers of different shapes of use
            (an embedding and a layer that is not laid out as ``[V, d]``).
    """
    weight_holders: dict[int, list[Layer]] = {}
    bias_holders: dict[int, list[Layer]] = {}
    for layer in layer_map.layers:
        for name, index in layer.indices.items():
            (weight_holders if name == "weight" else bias_holders).setdefault(index, []).append(layer)
    plans: list[BlockPlan] = []
    joined_biases: set[int] = set()
    for index in sorted(weight_holders):
        layers = weight_holders[index]
        embeddings = [layer for layer in layers if layer.rule is EmbeddingRule]
        if len(embeddings) == len(layers):
            plans.append(BlockPlan((index,), [Holder(layer) for layer in layers], input_major=True))
            continue
        if embeddings and any(layer.module.weight.ndim != 2 for layer in layers):
            raise NotImplementedError(
                f"KFAC: the weight of '{embeddings[0].name}' (Embedding) is shared with a layer that "
                "does not use it as a matrix [V, d]."
            )
        holders = [Holder(layer, transposed=layer.rule is EmbeddingRule) for layer in layers]
        bias = layers[0].bias_index if len(layers) == 1 else None
        if (
            not separate_weight_and_bias
            and bias is not None
            and bias_holders.get(bias) == layers
            and not embeddings
        ):
            plans.append(BlockPlan((index, bias), holders, joined=True))
            joined_biases.add(bias)
        else:
            plans.append(BlockPlan((index,), holders))
    for index in sorted(bias_holders):
        if index not in joined_biases:
            holders = [Holder(layer) for layer in bias_holders[index]]
            plans.append(BlockPlan((index,), holders, bias_only=True))
    return sorted(plans, key=lambda plan: plan.params[0])


def shared_output_sides(plans: list[BlockPlan]) -> dict[int, int]:
    """Blocks whose output side is another block's: ``{bias block: weight block}`` positions in ``plans``.

    A bias kept apart from its weight (``separate_weight_and_bias``) has the weight's output side
    where the same layers hold both: the same output gradients, summed the same way. The pass
    computes it once (for a type-2 factor the output sides are most of the work).
    """
    weights = {
        tuple(id(holder.layer) for holder in plan.holders): position
        for position, plan in enumerate(plans)
        if not (plan.bias_only or plan.input_major or any(holder.transposed for holder in plan.holders))
    }
    return {
        position: weights[key]
        for position, plan in enumerate(plans)
        if plan.bias_only and (key := tuple(id(holder.layer) for holder in plan.holders)) in weights
    }

"""The parameters ``θ`` of an operator: the tensors, checked, named, laid out, found in the module."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from curvkit._layout import TensorListLayout
from curvkit._model.autograd import parameter_paths


def normalize_params(
    params: Sequence[Tensor] | Mapping[str, Tensor],
) -> tuple[list[str] | None, list[Tensor]]:
    """The names (``None`` for a list) and tensors of ``params``.

    Raises:
        ValueError: If ``params`` is neither a list of tensors nor a dict of named tensors.
    """
    if isinstance(params, Mapping):
        return list(params.keys()), list(params.values())
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise ValueError(
            f"params must be a list of tensors or a dict of named tensors, got {type(params).__name__}."
        )
    return None, list(params)


def _module_parameter_names(
    model: nn.Module, names: list[str] | None, tensors: list[Tensor]
) -> list[list[str]]:
    """The names of each tensor in ``model`` (matched by identity, see :func:`parameter_paths`)."""
    by_identity = parameter_paths(model)
    found = []
    for index, tensor in enumerate(tensors):
        label = f"params[{names[index]!r}]" if names else f"params[{index}]"
        if id(tensor) not in by_identity:
            raise ValueError(f"{label} is not a parameter of model_func (compared by identity).")
        found.append(by_identity[id(tensor)])
    return found


class ModelParameters:
    """The parameters ``θ`` of a model function, checked once and watched afterwards.

    Args:
        model_func: An ``nn.Module`` or a callable ``X ↦ f(X)``.
        params: The parameters ``θ``: a list of tensors or a dict of named tensors, all of one
            dtype and device, all requiring grad.

    Attributes:
        model_func: The model.
        tensors: ``θ`` in order.
        labels: ``params[i]`` or ``params['name']`` per tensor, for messages.
        layout: Parameter-shaped tensor lists ↔ flat columns.
        dtype: Their dtype.
        device: Their device.

    Raises:
        ValueError: If ``model_func`` is not callable, ``params`` is empty, has mixed
            dtypes/devices, a tensor twice, a tensor that does not require grad, or a tensor that
            is not a parameter of the module.
    """

    def __init__(
        self, model_func: Callable[[Tensor], Tensor], params: Sequence[Tensor] | Mapping[str, Tensor]
    ):
        if not callable(model_func):
            raise ValueError(f"model_func must be callable, got {type(model_func).__name__}.")
        names, tensors = normalize_params(params)
        if not tensors:
            raise ValueError("params must contain at least one tensor.")
        first_label: dict[int, str] = {}
        for index, tensor in enumerate(tensors):
            label = f"params[{names[index]!r}]" if names else f"params[{index}]"
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{label} must be a tensor, got {type(tensor).__name__}.")
            if id(tensor) in first_label:
                raise ValueError(f"{label} is the same tensor as {first_label[id(tensor)]}; pass each once.")
            first_label[id(tensor)] = label
            if not tensor.requires_grad:
                raise ValueError(
                    f"{label} does not require grad; curvature is only defined for trainable parameters."
                )
        if len({t.dtype for t in tensors}) > 1 or len({t.device for t in tensors}) > 1:
            raise ValueError("params must all have the same dtype and device.")
        self.model_func = model_func
        self.labels = (
            [f"params[{n!r}]" for n in names] if names else [f"params[{i}]" for i in range(len(tensors))]
        )
        self.tensors = tensors
        self.layout = TensorListLayout([tensor.shape for tensor in tensors])
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        is_module = isinstance(model_func, nn.Module)
        self._aliases = _module_parameter_names(model_func, names, tensors) if is_module else None

    def check_unchanged(self) -> None:
        """Raise if ``params`` no longer describe the model the operator was built for.

        Raises:
            RuntimeError: If a parameter was replaced in the module (``model.w = nn.Parameter(...)``),
                changed dtype, device or shape (``model.double()``), or stopped requiring grad.
        """
        for index, (label, tensor) in enumerate(zip(self.labels, self.tensors)):
            if self._aliases is not None and any(
                self.model_func.get_parameter(name) is not tensor for name in self._aliases[index]
            ):
                problem = f"was replaced in model_func (attribute '{self._aliases[index][0]}')"
            elif (tensor.dtype, tensor.device, tensor.shape) != (
                self.dtype,
                self.device,
                self.layout.shapes[index],
            ):
                problem = (
                    f"is now {tensor.dtype} on {tensor.device} with shape {list(tensor.shape)}, not "
                    f"{self.dtype} on {self.device} with shape {list(self.layout.shapes[index])}"
                )
            elif not tensor.requires_grad:
                problem = "no longer requires grad"
            else:
                continue
            raise RuntimeError(
                f"{label} {problem} since the operator was built; build a new operator for the changed model."
            )

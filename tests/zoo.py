"""A zoo of small, deterministic problems on which every curvature operator is tested.

A problem is a model, a loss, the parameters to differentiate by and the mini-batches. Every
model is small enough for dense ``[D, D]`` references (``D`` ≲ 300 except the transformer block,
``D`` = 627), in ``eval`` mode, and free of randomness (dropout 0, no BatchNorm).

Problem ids read ``model-loss-reduction-layout-params[-f32]``, e.g. ``mlp-ce-mean-three-list``:

- models: ``mlp`` (ReLU, Sigmoid, Tanh), ``cnn`` (Conv2d with stride and padding, Flatten, Linear),
  ``shared`` (one Linear applied twice), ``transformer`` (default ``nn.TransformerEncoderLayer``,
  fused attention kernels and all), ``dict_input`` (forward takes ``{"x": ..., "z": ...}``),
  ``rnn`` (``nn.LSTM``, which ``vmap`` cannot push single samples through), ``resnet`` (a residual
  block with eval-mode ``BatchNorm2d``, max and average pooling), ``embedding`` (integer token
  inputs, ``nn.Embedding``, ``LayerNorm``, GELU) and ``seq2seq`` (``nn.Transformer`` with a causal
  mask and key padding masks, from a dict input: PyTorch's eval-mode fast path would turn the
  padded sequences into nested tensors);
- losses: ``mse``, ``ce`` (targets ``[N]``), ``ceseq`` (output ``[N, C, T]``, targets ``[N, T]``;
  transformer and seq2seq only), ``bce`` (soft targets in ``[0, 1]``, several outputs);
- layouts: ``one`` batch of 10 samples or ``three`` batches of 3, 5 and 2 samples;
- params: ``list``, ``dict`` (named) or ``subset`` (a list of every other parameter tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from curvkit import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    JacobianLinearOperator,
    TransposedJacobianLinearOperator,
    ggn_diagonal,
)

NUM_CLASSES = 3
SEQ_LEN = 4
D_MODEL = 8
LAYOUTS = {"one": (10,), "three": (3, 5, 2)}
LOSSES = {
    "mse": nn.MSELoss,
    "ce": nn.CrossEntropyLoss,
    "ceseq": nn.CrossEntropyLoss,
    "bce": nn.BCEWithLogitsLoss,
}
MODELS = ("mlp", "cnn", "shared", "transformer", "dict_input", "rnn", "resnet", "embedding", "seq2seq")
SOURCE_LEN = 5
VOCABULARY = 7
PARAMS_KINDS = ("list", "dict", "subset")
_DTYPES = {"f32": torch.float32, "f64": torch.float64}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class Problem:
    """Everything a curvature operator is built from.

    Attributes:
        name: The problem id.
        model: The network, in ``eval`` mode.
        loss_func: The loss.
        params: The parameters to differentiate by (list or dict of named tensors).
        data: Mini-batches ``(X, y)``.
        batch_size_fn: Batch size of an input; set for dict inputs.
    """

    name: str
    model: nn.Module
    loss_func: nn.Module
    params: Sequence[Tensor] | Mapping[str, Tensor]
    data: list[tuple[Any, Tensor]]
    batch_size_fn: Callable[[Any], int] | None = None

    @property
    def param_list(self) -> list[Tensor]:
        """The parameters as a list, in order."""
        return list(self.params.values()) if isinstance(self.params, Mapping) else list(self.params)

    @property
    def dim(self) -> int:
        """Total number ``D`` of parameter entries."""
        return sum(p.numel() for p in self.param_list)

    @property
    def num_data(self) -> int:
        """Total number ``N`` of samples."""
        return sum(y.shape[0] for _, y in self.data)

    @property
    def dtype(self) -> torch.dtype:
        return self.param_list[0].dtype

    def to(self, device: torch.device | str) -> Problem:
        """This problem with model and data on ``device`` (the model moves in place).

        ``params`` are the model's parameter objects, so they move with it.
        """
        self.model.to(device)
        assert all(param.device == torch.device(device) for param in self.param_list)
        data = [(_to(X, device), _to(y, device)) for X, y in self.data]
        return replace(self, data=data)


def _to(data: Any, device: torch.device | str) -> Any:
    """A tensor or a dict of tensors on ``device``."""
    if isinstance(data, Mapping):
        return {key: value.to(device) for key, value in data.items()}
    return data.to(device)


class SharedLinear(nn.Module):
    """The same ``Linear`` applied twice (weight sharing), then a head."""

    def __init__(self, width: int = 4, out: int = NUM_CLASSES):
        super().__init__()
        self.shared = nn.Linear(width, width)
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(torch.tanh(self.shared(x))))


class TinyTransformer(nn.Module):
    """A default ``nn.TransformerEncoderLayer`` on ``[N, T, 8]`` inputs plus a linear head.

    ``output`` selects the head: ``"tokens"`` gives ``[N, T, C]``, ``"pool"`` averages over the
    sequence (``[N, C]``), ``"seq"`` gives the ``[N, C, T]`` layout of sequence cross-entropy.
    """

    def __init__(self, output: str):
        super().__init__()
        self.output = output
        self.encoder = nn.TransformerEncoderLayer(
            d_model=D_MODEL, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(D_MODEL, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.encoder(x)
        if self.output == "pool":
            hidden = hidden.mean(dim=1)
        logits = self.head(hidden)
        return logits.permute(0, 2, 1) if self.output == "seq" else logits


class DictInput(nn.Module):
    """An MLP whose input is a dict ``{"x": [N, 3], "z": [N, 2]}``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, NUM_CLASSES))

    def forward(self, X: Mapping[str, Tensor]) -> Tensor:
        return self.net(torch.cat([X["x"], X["z"]], dim=1))


class Recurrent(nn.Module):
    """An ``nn.LSTM`` over ``[N, T, 3]`` sequences; a linear head on the last step's state."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class Residual(nn.Module):
    """A residual block of convolutions with ``BatchNorm2d`` (eval mode: running statistics),
    then max pooling, global average pooling and a linear head, on ``[N, 2, 4, 4]`` inputs."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.conv2, self.norm2 = nn.Conv2d(3, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.head = nn.Linear(2, NUM_CLASSES)
        for norm in (self.norm1, self.norm2):  # statistics other than the identity's
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 1.5)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.relu(self.norm1(self.conv1(x)))
        hidden = torch.relu(x + self.norm2(self.conv2(hidden)))
        pooled = nn.functional.adaptive_avg_pool2d(nn.functional.max_pool2d(hidden, 2), 1)
        return self.head(pooled.flatten(1))


class Embedded(nn.Module):
    """Token ids ``[N, 5]`` → ``nn.Embedding``, mean over tokens, ``LayerNorm``, GELU, head."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(nn.functional.gelu(self.norm(self.embedding(ids).mean(1))))


class Seq2Seq(nn.Module):
    """``nn.Transformer`` (one encoder and one decoder layer) on ``{"src", "tgt", "pad"}``.

    The decoder is causal; ``pad`` (``[N, 5]``, ``True`` where padded) masks the source in the
    encoder and in the cross-attention. ``output`` as for :class:`TinyTransformer`.
    """

    def __init__(self, output: str):
        super().__init__()
        self.output = output
        self.transformer = nn.Transformer(
            d_model=D_MODEL,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=8,
            dropout=0.0,
            batch_first=True,
        )
        self.head = nn.Linear(D_MODEL, NUM_CLASSES)

    def forward(self, X: Mapping[str, Tensor]) -> Tensor:
        tgt = X["tgt"]
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=tgt.dtype)
        hidden = self.transformer(
            X["src"], tgt, tgt_mask=causal, src_key_padding_mask=X["pad"], memory_key_padding_mask=X["pad"]
        )
        if self.output == "pool":
            hidden = hidden.mean(dim=1)
        logits = self.head(hidden)
        return logits.permute(0, 2, 1) if self.output == "seq" else logits


def dict_batch_size(X: Mapping[str, Tensor]) -> int:
    """Batch size of a dict input (``DictInput``, ``Seq2Seq``): that of its first entry."""
    return next(iter(X.values())).shape[0]


def _build_model(model: str, loss: str) -> nn.Module:
    """Build (with the current RNG state) the network for a model name."""
    if model == "mlp":
        return nn.Sequential(
            nn.Linear(4, 6),
            nn.ReLU(),
            nn.Linear(6, 5),
            nn.Sigmoid(),
            nn.Linear(5, 5),
            nn.Tanh(),
            nn.Linear(5, NUM_CLASSES),
        )
    if model == "cnn":
        return nn.Sequential(
            nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, NUM_CLASSES),
        )
    if model == "shared":
        return SharedLinear()
    if model == "transformer":
        return TinyTransformer({"ce": "pool", "ceseq": "seq"}.get(loss, "tokens"))
    if model == "dict_input":
        return DictInput()
    if model == "rnn":
        return Recurrent()
    if model == "resnet":
        return Residual()
    if model == "embedding":
        return Embedded()
    if model == "seq2seq":
        return Seq2Seq({"ce": "pool", "ceseq": "seq"}.get(loss, "tokens"))
    raise ValueError(f"Unknown model {model!r}; choose from {MODELS}.")


def _sample_input(model: str, n: int, dtype: torch.dtype) -> Any:
    if model == "mlp":
        return torch.randn(n, 4, dtype=dtype)
    if model == "cnn":
        return torch.randn(n, 2, 6, 6, dtype=dtype)
    if model == "shared":
        return torch.randn(n, 4, dtype=dtype)
    if model == "transformer":
        return torch.randn(n, SEQ_LEN, D_MODEL, dtype=dtype)
    if model == "rnn":
        return torch.randn(n, SEQ_LEN, 3, dtype=dtype)
    if model == "resnet":
        return torch.randn(n, 2, 4, 4, dtype=dtype)
    if model == "embedding":
        return torch.randint(0, VOCABULARY, (n, 5))
    if model == "seq2seq":
        pad = torch.zeros(n, SOURCE_LEN, dtype=torch.bool)
        pad[::2, -2:] = True  # every other sample has two padded positions
        return {
            "src": torch.randn(n, SOURCE_LEN, D_MODEL, dtype=dtype),
            "tgt": torch.randn(n, SEQ_LEN, D_MODEL, dtype=dtype),
            "pad": pad,
        }
    return {"x": torch.randn(n, 3, dtype=dtype), "z": torch.randn(n, 2, dtype=dtype)}


def _sample_target(loss: str, output: Tensor) -> Tensor:
    """Targets of the right kind for ``loss`` (drawn with the current RNG state)."""
    if loss == "mse":
        return torch.randn_like(output)
    if loss == "bce":
        return torch.rand_like(output)
    # class indices: [N] for "ce", [N, T] for "ceseq" (class axis 1 removed)
    return torch.randint(0, NUM_CLASSES, (output.shape[0], *output.shape[2:]))


def _select_params(model: nn.Module, params_kind: str) -> Sequence[Tensor] | Mapping[str, Tensor]:
    if params_kind == "list":
        return [p for p in model.parameters() if p.requires_grad]
    if params_kind == "dict":
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
    if params_kind == "subset":
        return [p for i, p in enumerate(model.parameters()) if i % 2 == 0]
    raise ValueError(f"Unknown params_kind {params_kind!r}; choose from {PARAMS_KINDS}.")


def make_problem(
    model: str,
    loss: str,
    reduction: str,
    layout: str = "three",
    dtype: torch.dtype = torch.float64,
    params_kind: str = "list",
    seed: int = 0,
) -> Problem:
    """Build a reproducible problem (``torch.manual_seed(seed)`` first).

    Args:
        model: One of :data:`MODELS`.
        loss: ``"mse"``, ``"ce"``, ``"ceseq"`` (transformer and seq2seq only) or ``"bce"``.
        reduction: ``"mean"`` or ``"sum"``.
        layout: ``"one"`` or ``"three"`` (batches of 3, 5, 2 samples).
        dtype: Floating-point type of the model and the data.
        params_kind: ``"list"``, ``"dict"`` or ``"subset"``.
        seed: Seed of the global RNG used to build model and data.

    Returns:
        The problem.

    Raises:
        ValueError: For unknown or incompatible choices.
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose from {tuple(LOSSES)}.")
    if loss == "ceseq" and model not in ("transformer", "seq2seq"):
        raise ValueError("loss 'ceseq' needs a sequence model: 'transformer' or 'seq2seq'.")
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose from {tuple(LAYOUTS)}.")
    torch.manual_seed(seed)
    net = _build_model(model, loss).to(dtype).eval()
    data = []
    for size in LAYOUTS[layout]:
        X = _sample_input(model, size, dtype)
        output = net(X).detach()  # with autograd on: no eval-mode fast path (nested tensors)
        data.append((X, _sample_target(loss, output)))
    suffix = "" if dtype == torch.float64 else f"-{_DTYPE_NAMES[dtype]}"
    return Problem(
        name=f"{model}-{loss}-{reduction}-{layout}-{params_kind}{suffix}",
        model=net,
        loss_func=LOSSES[loss](reduction=reduction),
        params=_select_params(net, params_kind),
        data=data,
        batch_size_fn=dict_batch_size if model in ("dict_input", "seq2seq") else None,
    )


def make_problem_from_id(problem_id: str) -> Problem:
    """Build the problem named ``model-loss-reduction-layout-params[-f32]``."""
    parts = problem_id.split("-")
    dtype = _DTYPES[parts.pop()] if parts[-1] in _DTYPES else torch.float64
    model, loss, reduction, layout, params_kind = parts
    return make_problem(model, loss, reduction, layout, dtype, params_kind)


PROBLEM_IDS = [
    "mlp-mse-mean-three-list",
    "mlp-mse-sum-one-dict",
    "mlp-ce-mean-three-list",
    "mlp-ce-sum-three-subset",
    "mlp-bce-mean-one-list",
    "mlp-bce-sum-three-dict",
    "cnn-mse-sum-three-list",
    "cnn-ce-mean-one-dict",
    "cnn-ce-sum-three-list",
    "cnn-bce-mean-three-subset",
    "shared-mse-mean-three-dict",
    "shared-ce-mean-one-list",
    "shared-bce-sum-three-list",
    "transformer-ceseq-mean-three-list",
    "transformer-ceseq-sum-one-dict",
    "transformer-ce-mean-three-subset",
    "transformer-mse-mean-one-list",
    "transformer-bce-sum-three-dict",
    "dict_input-mse-mean-three-list",
    "dict_input-ce-sum-one-dict",
    "dict_input-bce-mean-three-subset",
    "rnn-ce-mean-three-list",
    "rnn-bce-sum-one-dict",
    "resnet-ce-mean-three-list",
    "resnet-mse-sum-one-subset",
    "embedding-ce-mean-three-dict",
    "seq2seq-ceseq-mean-three-list",
    "mlp-ce-mean-three-list-f32",
    "cnn-mse-mean-three-dict-f32",
    "transformer-ceseq-mean-three-list-f32",
    "rnn-ce-mean-three-list-f32",  # oneDNN's LSTM kernel: no batched double backward
]
"""Curated problems: every compatible model × loss, both reductions, layouts and three params kinds."""

SMALL_PROBLEM_IDS = [
    "mlp-ce-mean-three-list",
    "mlp-bce-sum-one-dict",
    "cnn-mse-sum-three-list",
    "shared-bce-mean-three-list",
    "transformer-ceseq-mean-three-list",
    "dict_input-mse-mean-three-subset",
    "rnn-ce-mean-three-list",
    "resnet-ce-mean-three-list",
    "embedding-ce-mean-three-dict",
]
"""A few cheap problems for expensive checks (every model, every loss, both reductions)."""


CURVATURES: dict[str, Callable[..., Any]] = {
    "hessian": lambda p, data, **kw: HessianLinearOperator(p.model, p.loss_func, p.params, data, **kw),
    "ggn": lambda p, data, **kw: GGNLinearOperator(p.model, p.loss_func, p.params, data, **kw),
    "ef": lambda p, data, **kw: EFLinearOperator(p.model, p.loss_func, p.params, data, **kw),
    "fisher_mc": lambda p, data, **kw: FisherMCLinearOperator(p.model, p.loss_func, p.params, data, **kw),
    "jacobian": lambda p, data, **kw: JacobianLinearOperator(p.model, p.params, data, **kw),
    "jacobian_T": lambda p, data, **kw: TransposedJacobianLinearOperator(p.model, p.params, data, **kw),
    "ggn_diagonal": lambda p, data, **kw: ggn_diagonal(p.model, p.loss_func, p.params, data, **kw),
}
"""What is built from a problem's model, parameters, data and (but for the Jacobians) loss."""


def build(kind: str, problem: Problem, data: Any = None, **kwargs: Any) -> Any:
    """:data:`CURVATURES`' ``kind`` of ``problem``, on its data or on ``data``."""
    return CURVATURES[kind](problem, problem.data if data is None else data, **kwargs)

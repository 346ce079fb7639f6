"""Small problems for the KFAC / EKFAC tests, and reading blocks off dense matrices."""

import itertools

import torch
from torch import nn

F64 = torch.float64
VOCABULARY, WIDTH, LENGTH = 6, 4, 5


def batches(sizes, make_x, make_y, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(make_x(n, generator), make_y(n, generator)) for n in sizes]


def offsets(params):
    ends = list(itertools.accumulate(p.numel() for p in params))
    return [slice(end - p.numel(), end) for p, end in zip(params, ends)]


def block(matrix, params, first, last=None):
    spans = offsets(params)
    return matrix[spans[first].start : spans[last if last is not None else first].stop][
        :, spans[first].start : spans[last if last is not None else first].stop
    ]


def deep_linear(dtype=F64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 2)).to(dtype)


def regression_data(sizes, dtype=F64, inputs=4, outputs=2):
    data = batches(
        sizes,
        lambda n, g: torch.randn(n, inputs, generator=g, dtype=F64),
        lambda n, g: torch.randn(n, outputs, generator=g, dtype=F64),
    )
    return [(X.to(dtype), y.to(dtype)) for X, y in data]


def mlp_classifier(dtype=F64):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def classification_data(sizes, dtype=F64):
    return batches(
        sizes,
        lambda n, g: torch.randn(n, 4, generator=g, dtype=dtype),
        lambda n, g: torch.randint(0, 3, (n,), generator=g),
    )


class SequenceModel(nn.Module):
    """Linear layers on ``[N, T, in]``, a layer used twice; output ``[N, C, T]`` for cross-entropy."""

    def __init__(self, cross_entropy: bool):
        super().__init__()
        self.first, self.shared, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.cross_entropy = cross_entropy

    def forward(self, x):
        hidden = self.shared(torch.tanh(self.shared(torch.tanh(self.first(x)))))
        output = self.head(torch.tanh(hidden))
        return output.transpose(1, 2) if self.cross_entropy else output


def sequence_problem(loss: str):
    torch.manual_seed(2)
    model = SequenceModel(loss == "ce").double()
    make_y = {
        "ce": lambda n, g: torch.randint(0, 3, (n, 5), generator=g),
        "mse": lambda n, g: torch.randn(n, 5, 3, generator=g, dtype=F64),
    }[loss]
    data = batches((2, 3), lambda n, g: torch.randn(n, 5, 3, generator=g, dtype=F64), make_y)
    return model, nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss(), data


def conv_problem(dims: int):
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1) if dims == 2 else nn.Conv1d(2, 3, 3, padding=2, dilation=2)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    shape = (2, 6, 5) if dims == 2 else (2, 7)
    model(torch.zeros(1, *shape, dtype=F64))
    data = batches(
        (3, 2),
        lambda n, g: torch.randn(n, *shape, generator=g, dtype=F64),
        lambda n, g: torch.randint(0, 3, (n,), generator=g),
    )
    return model, nn.CrossEntropyLoss(), data


class LanguageModel(nn.Module):
    """Tokens ``[N, T]`` → embedding → tanh → head; logits ``[N, V, T]``; the head tied or not."""

    def __init__(self, tied: bool):
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, WIDTH, padding_idx=0)
        self.head = nn.Linear(WIDTH, VOCABULARY)
        if tied:
            self.head.weight = self.embedding.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.embedding(tokens))).transpose(1, 2)


def language_problem(tied: bool):
    torch.manual_seed(4)
    model = LanguageModel(tied).double()
    tokens = lambda n, g: torch.randint(0, VOCABULARY, (n, LENGTH), generator=g)  # noqa: E731
    return model, nn.CrossEntropyLoss(), batches((2, 3), tokens, tokens)

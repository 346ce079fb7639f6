"""The built-in problems: a small MLP or CNN trained briefly on scikit-learn's bundled digits."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from curvkit.report.settings import ReportInputError

NUM_CLASSES = 10
BATCH_SIZE = 256
"""Samples per mini-batch of the analysed data."""
EPOCHS = 20
QUICK_EPOCHS = 5
QUICK_SAMPLES = 512
"""Samples analysed with ``--quick`` (the first ones of the data set); all 1,797 otherwise."""


def digits_data() -> tuple[Tensor, Tensor]:
    """Scikit-learn's bundled 8×8 digits (1,797 images, no download), pixels scaled to ``[0, 1]``.

    Returns:
        Images ``[1797, 1, 8, 8]`` (float32) and labels ``[1797]`` (int64).

    Raises:
        ReportInputError: If scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ReportInputError(
            "--model mlp/cnn needs scikit-learn's digits data: pip install 'curvkit[report]'."
        ) from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.int64)


def mlp() -> nn.Sequential:
    """64 → 24 → 24 → 10 with tanh activations: 2,410 parameters."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 24),
            tanh1=nn.Tanh(),
            fc2=nn.Linear(24, 24),
            tanh2=nn.Tanh(),
            fc3=nn.Linear(24, NUM_CLASSES),
        )
    )


def cnn() -> nn.Sequential:
    """Two 3×3 convolutions (1 → 6 → 8 channels, the second with stride 2), ReLU, a linear head.

    1,790 parameters.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(6, 8, 3, padding=1, stride=2),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(8 * 4 * 4, NUM_CLASSES),
        )
    )


BUILDERS = {"mlp": mlp, "cnn": cnn}


def trained_builtin(
    name: str, seed: int, quick: bool, progressbar: bool = True
) -> tuple[nn.Module, nn.Module, list, str]:
    """Build the named model and train it with Adam on the digits, with a progress bar.

    Training uses all images; the analysed data are the first :data:`QUICK_SAMPLES` images with
    ``quick``, all of them otherwise, in batches of :data:`BATCH_SIZE` (in a fixed order).

    Args:
        name: ``'mlp'`` or ``'cnn'``.
        seed: Seed of the initialization and the shuffling.
        quick: Train :data:`QUICK_EPOCHS` epochs instead of :data:`EPOCHS`, analyse a subset.
        progressbar: Show a progress bar over the epochs.

    Returns:
        ``(model, loss_function, data, description)``, the model in eval mode, on the CPU.
    """
    images, labels = digits_data()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    epochs = QUICK_EPOCHS if quick else EPOCHS
    epoch_bar = tqdm(
        range(epochs), desc=f"training the {name} on digits", unit="epoch", disable=not progressbar
    )
    for _ in epoch_bar:
        for indices in torch.randperm(len(labels), generator=generator).split(64):
            optimizer.zero_grad()
            loss_function(model(images[indices]), labels[indices]).backward()
            optimizer.step()
    model.eval()
    num_data = QUICK_SAMPLES if quick else len(labels)
    data = [
        (images[start : start + BATCH_SIZE], labels[start : start + BATCH_SIZE])
        for start in range(0, num_data, BATCH_SIZE)
    ]
    accuracy = _accuracy(model, images, labels)
    description = (
        f"The built-in {name.upper()} trained for {epochs} epochs with Adam on scikit-learn's digits "
        f"(1,797 images of 8×8 pixels, training accuracy {accuracy:.1%}); analysed on {num_data} images "
        f"in batches of {BATCH_SIZE}, with the cross-entropy loss."
    )
    return model, loss_function, data, description


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).double().mean().item()

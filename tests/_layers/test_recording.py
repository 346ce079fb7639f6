"""The layer map and the recording of every use: which layers are per sample, and the output
gradients of each use against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvkit._layers.parameters import layer_map
from curvkit._layers.recording import output_gradients, per_sample_layers, recording, traced_forward


class _TiedLanguageModel(nn.Module):
    """Embedding and output head share one weight (weight tying); a LayerNorm in between."""

    def __init__(self, vocabulary: int = 7, width: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens):
        features = torch.tanh(self.hidden(self.norm(self.embedding(tokens))))
        return self.head(features).transpose(1, 2)  # [N, V, T]


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


def _position(params, tensor):
    return next(index for index, param in enumerate(params) if param is tensor)


def test_the_map_places_each_parameter_and_names_the_others():
    model = _TiedLanguageModel()
    params = list(model.parameters())  # embedding/head weight once, LayerNorm, hidden
    found = layer_map(model, params)
    names = {layer.name: layer.indices for layer in found.layers}
    tied = _position(params, model.embedding.weight)
    assert names["embedding"] == {"weight": tied} and names["head"] == {"weight": tied}
    assert set(found.unsupported) == {
        _position(params, model.norm.weight),
        _position(params, model.norm.bias),
    }
    assert (
        "'norm' (LayerNorm): its parameter 'weight'"
        in found.unsupported[_position(params, model.norm.weight)]
    )
    assert not found.covers_all(len(params))


def _record(model, X, params):
    layers = layer_map(model, params).layers
    with recording(layers):
        output, chosen = traced_forward(model, model, X, X.shape[0], layers)
        columns = torch.randn(3, *output.shape, dtype=output.dtype)
        gradients = output_gradients(chosen, output, columns)
        uses = {layer.name: [use.output for use in layer.uses] for layer in chosen}
        expected = {
            layer.name: [
                torch.stack(
                    [
                        torch.autograd.grad(output, use.output, column, retain_graph=True)[0]
                        for column in columns
                    ]
                )
                for use in layer.uses
            ]
            for layer in chosen
        }
        found = {layer.name: layer_gradients for layer, layer_gradients in zip(chosen, gradients)}
    return uses, found, expected


def test_every_use_is_recorded_with_its_output_gradients():
    torch.manual_seed(0)
    model = _Twice().double()
    X = torch.randn(5, 3, dtype=torch.float64)
    uses, found, expected = _record(model, X, list(model.parameters()))
    assert len(uses["shared"]) == 2 and len(uses["head"]) == 1
    for name in expected:
        for result, reference in zip(found[name], expected[name]):
            assert result.shape == (3, *reference.shape[1:])
            torch.testing.assert_close(result, reference)


def test_tied_weights_qualify_only_with_all_their_layers():
    """The embedding and the head share a weight: both layers are per sample together. A weight
    also used outside its layers (here: a second product with the head's weight) disqualifies them."""
    torch.manual_seed(0)
    model = _TiedLanguageModel().double()
    tokens = torch.randint(0, 7, (4, 5))
    uses, _, _ = _record(model, tokens, list(model.parameters()))
    assert {"embedding", "head", "hidden"} <= set(uses)

    class Outside(_TiedLanguageModel):
        def forward(self, tokens):
            logits = super().forward(tokens)
            return logits + (self.embedding.weight.sum() * 1e-3)

    model = Outside().double()
    uses, _, _ = _record(model, tokens, list(model.parameters()))
    assert "embedding" not in uses and "head" not in uses and "hidden" in uses


@pytest.mark.parametrize("global_hook", [False, True])
def test_global_hooks_disqualify_every_layer(global_hook):
    model = nn.Sequential(nn.Linear(3, 2)).double()
    layers = layer_map(model, list(model.parameters())).layers
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None) if global_hook else None
    try:
        with recording(layers):
            output = model(torch.randn(4, 3, dtype=torch.float64))
            assert per_sample_layers(layers, output, 4, lambda tensor: True) == (
                [] if global_hook else layers
            )
    finally:
        if handle is not None:
            handle.remove()


def test_forward_only_records_inputs_without_a_backward_pass():
    """KFAC's 'forward-only' needs each use's input only: the records hold it as the layer saw it."""
    torch.manual_seed(0)
    model = _Twice().double()
    X = torch.randn(5, 3, dtype=torch.float64)
    layers = layer_map(model, list(model.parameters())).layers
    with recording(layers):
        _, chosen = traced_forward(model, model, X, 5, layers)
        shared = next(layer for layer in chosen if layer.name == "shared")
        torch.testing.assert_close(shared.uses[0].inputs, X)
        torch.testing.assert_close(shared.uses[1].inputs, torch.tanh(model.shared(X)))
    assert all(not layer.uses for layer in layers)  # dropped with the context

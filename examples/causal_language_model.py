r"""Curvature of a causal language model: the two layouts of sequence targets.

A causal language model predicts token ``t + 1`` from the tokens up to ``t``: each sequence of
``T`` positions has ``T`` targets. curvkit takes them in either of two layouts (details in
``docs/sequence-targets.md``):

1. **Sequence axis kept**: logits ``[N, C, T]`` (classes second, as ``CrossEntropyLoss`` wants
   them), targets ``[N, T]``. A sample is a sequence: ``num_data`` counts sequences.
2. **Flattened**: logits ``[N·T, C]``, targets ``[N·T]``, and ``batch_size_fn`` counting the
   targets of a batch (``lambda X: X.numel()`` for token ids ``X`` of shape ``[N, T]``). A sample
   is a token: ``num_data`` counts tokens.

A ``'mean'`` cross-entropy averages over the ``N·T`` tokens (less those whose target is
``ignore_index``) in both layouts, so the Hessian, the GGN and the MC-Fisher's expectation are
the same. The empirical Fisher is not: it sums outer products of per-*sample* gradients, of whole
sequences in the first layout and of single tokens in the second.

Everything runs in float64 on a model small enough for dense references (``curvkit.reference``).
"""

import torch
from torch import nn

from curvkit import EFLinearOperator, GGNLinearOperator, HessianLinearOperator, reference
from curvkit.examples.utils import report_nonclose

torch.manual_seed(0)
VOCABULARY, WIDTH, LENGTH = 7, 4, 5


class CausalLM(nn.Module):
    """Token and position embeddings, one causal transformer block, a linear head: ``[N, T, C]``."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, WIDTH)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, WIDTH))
        self.block = nn.TransformerEncoderLayer(
            WIDTH, nhead=1, dim_feedforward=8, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(WIDTH, VOCABULARY)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, dtype=self.position.dtype)
        hidden = self.embedding(tokens) + self.position[:length]
        return self.head(self.block(hidden, src_mask=causal, is_causal=True))


class SequenceLogits(nn.Module):
    """Layout 1: logits ``[N, C, T]``."""

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(tokens).transpose(1, 2)


class TokenLogits(nn.Module):
    """Layout 2: logits ``[N·T, C]``, one row per token."""

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm(tokens).flatten(0, 1)


lm = CausalLM().double().eval()
params = list(lm.parameters())  # the same tensors in both layouts
sequence_model, token_model = SequenceLogits(lm), TokenLogits(lm)

# %%
# Data: next-token targets. The last sequence is shorter; its padded positions carry the
# target ``ignore_index`` (-100), which the mean leaves out.

sequences = torch.randint(0, VOCABULARY, (5, LENGTH + 1))
inputs, targets = sequences[:, :-1], sequences[:, 1:].clone()
targets[-1, -2:] = -100
sequence_data = [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])]  # y: [N, T]
token_data = [(X, y.flatten()) for X, y in sequence_data]  # y: [N·T]


def count_tokens(X: torch.Tensor) -> int:
    """The samples of a batch in the flattened layout: its tokens."""
    return X.numel()


loss_func = nn.CrossEntropyLoss()  # averages over the 23 tokens that are not ignored
G_sequences = GGNLinearOperator(sequence_model, loss_func, params, sequence_data)
G_tokens = GGNLinearOperator(token_model, loss_func, params, token_data, batch_size_fn=count_tokens)
print(f"num_data: {G_sequences.num_data} sequences, {G_tokens.num_data} tokens")

# %%
# Hessian and GGN: the same matrix in both layouts, and that of the dense reference.

vector = torch.randn(G_sequences.shape[1], dtype=torch.float64)
dense_ggn = reference.ggn_matrix(sequence_model, loss_func, params, sequence_data)
report_nonclose(G_sequences @ vector, dense_ggn @ vector, rtol=1e-8, atol=1e-10)
report_nonclose(G_tokens @ vector, dense_ggn @ vector, rtol=1e-8, atol=1e-10)

H_sequences = HessianLinearOperator(sequence_model, loss_func, params, sequence_data)
H_tokens = HessianLinearOperator(token_model, loss_func, params, token_data, batch_size_fn=count_tokens)
dense_hessian = reference.hessian_matrix(sequence_model, loss_func, params, sequence_data)
report_nonclose(H_sequences @ vector, dense_hessian @ vector, rtol=1e-8, atol=1e-10)
report_nonclose(H_tokens @ vector, dense_hessian @ vector, rtol=1e-8, atol=1e-10)

# %%
# The empirical Fisher: ``(1/K) Σ_n g_n g_nᵀ`` over samples, ``K`` the 23 averaged tokens. With
# the sequence axis kept, ``g_n`` is the gradient of sequence ``n``'s summed loss; flattened,
# that of one token's. Each matches its own reference; the two differ.

E_sequences = EFLinearOperator(sequence_model, loss_func, params, sequence_data)
E_tokens = EFLinearOperator(token_model, loss_func, params, token_data, batch_size_fn=count_tokens)
dense_ef_sequences = reference.empirical_fisher_matrix(sequence_model, loss_func, params, sequence_data)
dense_ef_tokens = reference.empirical_fisher_matrix(token_model, loss_func, params, token_data, count_tokens)
report_nonclose(E_sequences @ vector, dense_ef_sequences @ vector, rtol=1e-8, atol=1e-10)
report_nonclose(E_tokens @ vector, dense_ef_tokens @ vector, rtol=1e-8, atol=1e-10)
difference = (E_sequences @ vector - E_tokens @ vector).norm() / (E_tokens @ vector).norm()
print(f"EF per sequence vs per token: relative difference {difference:.2f}")

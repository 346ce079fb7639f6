r"""KFAC's inverse as the preconditioner of conjugate gradients on a damped GGN.

Solving :math:`(\mathbf{G} + \delta\mathbf{I})\,\mathbf{x} = \mathbf{b}` for the GGN
:math:`\mathbf{G}` of a network is the inner step of Newton-type optimizers, Laplace
approximations and influence functions. CG needs only products with the GGN, but as many
iterations as the damped GGN's spectrum is spread out, and raw input features of very different
scales (here from 0.1 to 10, not centred) spread it a lot. KFAC approximates each layer's block
of the GGN by a Kronecker product :math:`\mathbf{G}_l \otimes \mathbf{A}_l` whose input factor
:math:`\mathbf{A}_l` carries exactly that scaling, and its damped inverse costs two small
matrix products per layer. Used as CG's preconditioner :math:`\mathbf{M} \approx (\mathbf{G} +
\delta\mathbf{I})^{-1}`, it takes the input scaling off CG's hands.

Two ways of damping KFAC's inverse are shown: ``use_exact_damping=True`` inverts
:math:`\mathbf{G}_l \otimes \mathbf{A}_l + \delta\mathbf{I}` exactly through the factors'
eigendecompositions; ``use_heuristic_damping=True`` adds :math:`\pi\sqrt{\delta}` and
:math:`\sqrt{\delta}/\pi` to the two factors (Martens & Grosse 2015), which needs only Cholesky
factors. KFAC is block diagonal and ignores the coupling between layers, so it is no help where
CG converges in a few dozen iterations anyway (well-scaled inputs, a GGN of low effective rank):
precondition when the spectrum is spread by what the factors capture.

A one-hidden-layer MLP on 256 samples, MSE, float64; it runs in a few seconds.
"""

import torch
from torch import nn

from curvkit import GGNLinearOperator, KFACLinearOperator
from curvkit.linalg import conjugate_gradient, damped

torch.manual_seed(0)
NUM_SAMPLES, IN_FEATURES, HIDDEN, OUT_FEATURES = 256, 10, 16, 3
DAMPING, TOLERANCE = 1e-4, 1e-6

# %%
# Data with features on scales from 0.1 to 10 around a common offset, and a small MLP.

scales = torch.logspace(-1, 1, IN_FEATURES, dtype=torch.float64)
X = torch.randn(NUM_SAMPLES, IN_FEATURES, dtype=torch.float64) * scales + 3.0
y = torch.randn(NUM_SAMPLES, OUT_FEATURES, dtype=torch.float64)
data = [(X[:128], y[:128]), (X[128:], y[128:])]
model = nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT_FEATURES)).double()
loss_func = nn.MSELoss()
params = list(model.parameters())

# %%
# The damped GGN (products only; never formed) and KFAC's damped inverses. KFAC's factors are
# computed once, in one pass over the data, at the first product with either inverse.

ggn = damped(GGNLinearOperator(model, loss_func, params, data), DAMPING)
kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2")
preconditioners = {
    "none": None,
    "KFAC, exact damping": kfac.inverse(damping=DAMPING, use_exact_damping=True),
    "KFAC, π-heuristic damping": kfac.inverse(damping=DAMPING, use_heuristic_damping=True),
}

# %%
# CG from zero on one right-hand side, counting iterations until the residual has shrunk by
# ``TOLERANCE`` relative to ``b``.

b = torch.randn(ggn.shape[0], 1, dtype=torch.float64)
iterations, residuals = {}, {}
for name, preconditioner in preconditioners.items():
    count = [0]

    def one_more(_, count=count):
        """CG calls this once per iteration."""
        count[0] += 1

    x = conjugate_gradient(ggn, b, tol=TOLERANCE, M=preconditioner, callback=one_more)
    iterations[name] = count[0]
    residuals[name] = float((ggn @ x - b).norm() / b.norm())

print(f"D = {ggn.shape[0]} parameters, damping {DAMPING:g}, relative tolerance {TOLERANCE:g}")
print(f"{'preconditioner':<28}{'CG iterations':>15}{'relative residual':>20}")
for name in preconditioners:
    print(f"{name:<28}{iterations[name]:>15}{residuals[name]:>20.1e}")

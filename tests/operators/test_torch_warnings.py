"""curvkit's products show none of torch's warnings about torch's own code.

torch loads its forward-mode decompositions on the first forward-mode product of a process and
compiles them with ``torch.jit.script``, which warns that it is deprecated (a
``DeprecationWarning`` in torch 2.13, a ``FutureWarning`` in 2.14). Only a fresh interpreter
shows that first load, so each check runs in a subprocess, with every warning an error.
"""

import subprocess
import sys
import textwrap

import pytest

_PRELUDE = """
import sys
import warnings

import torch
from torch import nn

from curvkit import GGNLinearOperator, HessianLinearOperator, JacobianLinearOperator

warnings.simplefilter("error")  # from here on, every warning is an error
DECOMPOSITIONS = "torch._decomp.decompositions_for_jvp"
assert DECOMPOSITIONS not in sys.modules, "loaded before the first product: the check would not see it"
generator = torch.Generator().manual_seed(0)
data = [(torch.randn(4, 3, generator=generator), torch.randint(0, 2, (4,), generator=generator))]
"""

_CASES = {
    "first forward-mode products": """
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        params = list(model.parameters())
        ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data, check_deterministic=False)
        dim = ggn.shape[0]
        ggn @ torch.randn(dim)  # one column: dual numbers
        ggn @ torch.randn(dim, 3)  # several: vmap over torch.func.jvp
        JacobianLinearOperator(model, params, data, check_deterministic=False) @ torch.randn(dim)
        HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data) @ torch.randn(dim)
    """,
    "dropout models": """
        model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2))
        params = list(model.parameters())
        try:  # train mode: the determinism probe multiplies, then refuses the model
            GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data)
        except RuntimeError as error:
            assert "Dropout with p=0.5 in train mode" in str(error), error
        else:
            raise AssertionError("a random model was accepted")
        model.eval()
        ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data)
        ggn @ torch.randn(ggn.shape[0], 2)
    """,
}


@pytest.mark.parametrize("case", list(_CASES), ids=lambda case: case.replace(" ", "-"))
def test_no_warnings_from_torchs_first_forward_mode_load(case):
    script = _PRELUDE + textwrap.dedent(_CASES[case]) + "assert DECOMPOSITIONS in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

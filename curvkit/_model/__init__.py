"""The model as a differentiable function of its parameters: derivatives per product, kernels."""

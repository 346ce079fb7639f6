"""Helpers for the tutorials: dense ``torch.func`` references and array comparison."""

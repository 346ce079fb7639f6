"""Per-layer machinery: which parameters sit in which layer, records of each layer's uses.

One rule per layer type, and the products built on them (layer factors, layer chains).
"""

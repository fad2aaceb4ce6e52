"""Triton GPU kernels of pyfloor (installed as ``pyfloor.kernels``).

Importing this package requires Triton; ``pyfloor`` itself never needs it.
"""

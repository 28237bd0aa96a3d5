"""Offline hard-negative generation (PyTorch: transformers + diffusers).

Imported only by launch/make_negatives.py and benchmarks/negatives.py; the JAX
training path never imports it.
"""

"""Evaluators: each has `evaluate(model, ...) -> dict` of percentages over the inference API."""

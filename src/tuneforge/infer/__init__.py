"""Inference: load a model and its adapters, render with its chat template, stream answers split into parts."""

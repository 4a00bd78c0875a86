"""Shipped trained weights (safetensors) and their model cards; see harness.store.checkpoints."""

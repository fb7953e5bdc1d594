"""Adapters for other people's training: Lightning and Hugging Face callbacks, TensorBoard and W&B writers.

Each imports its library only when used, so the core install does not need them."""

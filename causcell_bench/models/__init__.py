"""Our own torch models. They know nothing of the benchmark: arrays and
tensors in, arrays and tensors out."""

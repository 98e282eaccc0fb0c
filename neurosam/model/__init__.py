"""The networks only: plain ``nn.Module``s, built from a ``ModelConfig`` by ``build.py``; their
training lives apart in ``neurosam.training``."""

"""Training, pretraining and distillation of the networks in ``neurosam.model``, and the data,
augmentation and losses they use."""

"""neurosam: block-wise neuron segmentation of petascale EM volumes with a SAM2-guided network."""

__version__ = "0.1.0"

"""retain: continual learning with pre-trained models."""

__version__ = "0.1.0"

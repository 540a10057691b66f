"""Edge pipeline: distill, prune, quantize, compile and benchmark PyTorch models for edge targets."""
__version__ = "0.1.0"

"""Quantization-aware distillation (QAD): fake-quant fine-tuning with torchao PT2E QAT and the KD loss."""

"""Measuring: the child-process benchmark harness, its JSON schema and the noise-aware compare gate."""

"""Per-layer profiles mapped back to PyTorch module paths (`python -m pipeline profile`).

One module per backend (ort, openvino, litert; trt_import parses trtexec's exports from the device),
mapping.py (runtime names -> module paths), schema.py (the one row schema), target.py (profile a run's
target and store it in run.json).
"""

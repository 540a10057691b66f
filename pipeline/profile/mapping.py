"""Map a runtime's op names back to PyTorch module paths.

The export (pipeline/stages/export.py, torch.onnx legacy exporter) names every ONNX node by its module
scope: `/layer2/layer2.0/shortcut/shortcut.0/Conv` is the Conv of module `layer2.0.shortcut.0`. Runtimes
keep those names with their own suffixes or rename fused nodes after a tensor:

    ONNX Runtime  `/f/f.0/f.0.0/Conv_token_1` (QDQ fusion), `/f/f.0/f.0.2/Relu_output_0_nchwc` (NCHWc conv
                  named after the fused Relu's output), `input_QuantizeLinear`, `Transpose` (layout, unnamed)
    OpenVINO      `/f/f.0/f.0.0/Conv/WithoutBiases`, `.../Relu/fq_output_0`, `logits` (a tensor name),
                  `A_abcd_acdb_B` (a reorder in front of node B); the runtime model's `originalLayersNames`
                  lists the ONNX nodes a fused node came from
    LiteRT        tensor names carry the module path with class names (litert-torch):
                  `.../torch.nn.modules.container.Sequential_features/...Sequential_0/torch.nn.modules.conv.Conv2d_0;1`

So a name is resolved against the FP32 export's ONNX graph (node names, then tensor names -> producer),
after stripping known suffixes; a fused compute op named after its activation is walked back to the
compute node it came from. What resolves to nothing stays unmapped and is reported as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

COMPUTE_ONNX = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger",
                "MatMulInteger"}
# Runtime op types that do the arithmetic of a layer (all backends, lower case).
COMPUTE_RUNTIME = {"conv", "qlinearconv", "fusedconv", "nchwcconv", "convinteger", "gemm", "qgemm", "matmul",
                   "qlinearmatmul", "matmulinteger", "fusedmatmul", "convolution", "groupconvolution",
                   "fullyconnected", "fullyconnectedquantizedlegacy", "fullyconnectedquantized", "conv_2d",
                   "depthwise_conv_2d", "fully_connected", "batch_matmul", "transpose_conv"}
QUANT_TYPES = {"quantizelinear", "dequantizelinear", "dynamicquantizelinear", "fakequantize", "quantize",
               "dequantize", "requantize", "convert"}
# Data movement a runtime adds around a layer (layout reorders, LiteRT's explicit PAD before a conv): its
# time is reported as the row's overhead, with Q/DQ.
REFORMAT_TYPES = {"transpose", "reorder", "reorderinput", "reorderoutput", "reshape", "flatten", "squeeze",
                  "unsqueeze", "pad", "copy", "reformat", "shuffle"}

# Suffixes runtimes append to an ONNX node or tensor name, tried repeatedly.
_SUFFIXES = [re.compile(p) for p in (
    r"_kernel_time$", r"_token_\d+$", r"_nchwc$", r"_quant$", r"/WithoutBiases$", r"/DequantizationMultiply$",
    r"/fq_[A-Za-z0-9_]+$", r"_(?:Dequantize|Quantize)Linear$", r"/sink_port_\d+$", r"_output_\d+$",
    r"_fused_\w+$", r"/FusedConvolution$")]
_REORDER = re.compile(r"_(?:[a-zA-Z0-9]{3,10})_(?:[a-zA-Z0-9]{3,10})_(?=\S)")


def op_kind(op_type: str) -> str:
    """compute / quantize / reformat / other, from a runtime op type."""
    t = op_type.lower()
    if t in COMPUTE_RUNTIME or t.startswith("qlinearconv") or "conv" in t and "convert" not in t:
        return "compute"
    if t in QUANT_TYPES:
        return "quantize"
    if t in REFORMAT_TYPES:
        return "reformat"
    return "other"


def scope_to_module(node_name: str) -> str | None:
    """`/layer2/layer2.0/shortcut/shortcut.0/Conv` -> `layer2.0.shortcut.0`; `/Flatten` -> `` (top level).

    The legacy exporter writes one scope per module, where a child of a container is written
    qualified by its parent's attribute (`layer2.0` under `layer2`, `shortcut.0` under `shortcut`)."""
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]  # the last part is the op
    path: list[str] = []
    prev = None
    for s in parts:
        if prev is not None and s.startswith(prev + "."):
            path.append(s[len(prev) + 1:])   # `layer2.0` after `layer2`: qualified by the parent's scope
        else:
            path.append(s)
        prev = s
    return ".".join(path)


def litert_module(tensor_name: str) -> str | None:
    """A litert-torch tensor name -> module path: the `Class_attr` segments after the `*_wrapped` root.
    Fused tensors list several modules separated by `;;`; the compute module (conv/linear) is preferred."""
    best = None
    for piece in tensor_name.split(";;"):
        piece = re.sub(r";\d*$", "", piece)
        segs = piece.split("/")
        root = next((i for i, s in enumerate(segs) if s.endswith("_wrapped")), None)
        if root is None:
            continue
        lasts = [s.rsplit(".", 1)[-1] for s in segs[root + 1:]]
        if any("_" not in last for last in lasts):
            continue
        attrs = [last.split("_", 1)[1] for last in lasts]
        module = ".".join(attrs)
        cls = segs[-1].rsplit(".", 1)[-1].split("_", 1)[0].lower()
        if best is None or any(k in cls for k in ("conv", "linear")):
            best = module
    return best


@dataclass
class OnnxIndex:
    """Node and tensor names of the FP32 export, for resolving runtime names."""

    nodes: dict[str, tuple[str, list[str]]] = field(default_factory=dict)   # name -> (op_type, inputs)
    producer: dict[str, str] = field(default_factory=dict)                   # tensor -> node name
    graph_inputs: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)

    @classmethod
    def from_onnx(cls, path: str | Path) -> "OnnxIndex":
        import onnx

        g = onnx.load(str(path), load_external_data=False).graph
        idx = cls(graph_inputs={i.name for i in g.input})
        for n in g.node:
            idx.nodes[n.name] = (n.op_type, list(n.input))
            for o in n.output:
                idx.producer[o] = n.name
            m = scope_to_module(n.name)
            if m is not None:
                idx.modules.add(m)
        return idx

    def module_of_node(self, node: str) -> str | None:
        m = scope_to_module(node)
        if m is None:
            return None
        # `relu_1`: a module called twice gets a numbered scope; it is the same module.
        base = re.sub(r"_\d+$", "", m)
        return base if m not in self.modules and base in self.modules else m

    def _node_for(self, name: str) -> str | None:
        cands = [name]
        seen = set()
        while cands:
            c = cands.pop(0)
            if c in seen or not c:
                continue
            seen.add(c)
            if c in self.nodes:
                return c
            if c in self.producer:
                return self.producer[c]
            for rx in _SUFFIXES:
                s = rx.sub("", c)
                if s != c:
                    cands.append(s)
        return None

    def _walk_to_compute(self, node: str) -> str:
        """A fused conv named after its Relu/Add: follow first inputs back to the compute node."""
        cur = node
        for _ in range(4):
            op, inputs = self.nodes[cur]
            if op in COMPUTE_ONNX:
                return cur
            prev = next((self.producer[i] for i in inputs if i in self.producer), None)
            if prev is None:
                break
            cur = prev
        return node

    def resolve(self, names: list[str], runtime_op_type: str) -> tuple[str | None, str | None]:
        """(module path, ONNX node) for the first of ``names`` that resolves; (None, None) when none does.
        For a reorder `A_abcd_acdb_B` the consumer B is tried first (the layer it feeds)."""
        expanded: list[str] = []
        for n in names:
            parts = _REORDER.split(n, maxsplit=1)
            expanded += [parts[1], parts[0]] if len(parts) == 2 else [n]
        for n in expanded:
            node = self._node_for(n)
            if node is not None:
                if op_kind(runtime_op_type) == "compute":
                    node = self._walk_to_compute(node)
                return self.module_of_node(node), node
            if n in self.graph_inputs or re.sub(r"(_QuantizeLinear|/fq_\w+)$", "", n) in self.graph_inputs:
                return None, None
        for n in expanded:  # not in this graph (e.g. renamed by a converter): parse the scope itself
            m = scope_to_module(n)
            if m is not None and m in self.modules:
                return m, None
        return None, None

"""The recipe: a typed schema with a default for every field.

The default run needs no file at all. A YAML file (`--config`) and repeated
`--set dotted.key=value` overrides are layered on top, then validated; a validation
error names the field path, the bad value and what is allowed.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)

from pipeline.distill.losses import DEFAULT_TERMS, LossTerm
from pipeline.errors import ConfigError


# scikit-learn's random_state takes 0..2**32-1 and the code adds offsets to the seed (seed + 1 for the
# validation split, seed + round for pruning recovery rounds): keep headroom for them.
SEED_MAX = 2**32 - 1 - 1000
SEED_HELP = f"random seed, 0..{SEED_MAX}"

OUTPUT_HELP = ("which part of the model's forward output holds the logits: auto, an index (0), a key or field "
               "(logits), or a dotted path (1.logits)")


class Section(BaseModel):
    # Unknown keys are typos: refuse them instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    val: float = Field(0.15, gt=0, lt=0.5, description="fraction of the data held out for selection")
    test: float = Field(0.2, gt=0, lt=0.5, description="fraction held out for the final test (never used for selection)")


class DataConfig(Section):
    source: str = Field("auto", description="auto (what data.path holds; builtin:digits without a path) | "
                        "builtin:digits | builtin:mnist | imagefolder | cifar | npz")
    path: Optional[str] = Field(None, description="folder or file for imagefolder/cifar/npz sources")
    input_size: int = Field(32, ge=4, le=1024, description="square input side in pixels")
    channels: Literal[1, 3] = 1
    channel_order: Literal["rgb", "bgr"] = "rgb"
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: bool = Field(False, description="training augmentation: pad-crop (+flip) up to 64 px, RandomResizedCrop "
                                             "(+flip) above; evaluation: resize (+ centre crop above 64 px)")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes reading training batches "
                                                    "from the store (0: in the training process)")
    hflip: bool = Field(False, description="horizontal flips in augmentation (off for digits: mirrored digits are other glyphs)")
    bad_images: Literal["skip", "error"] = "skip"
    limit: Optional[int] = Field(None, ge=10, le=2**31 - 1, description="keep at most this many training images (quick runs)")

    @model_validator(mode="after")
    def _norm_len(self):
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.channels):
                raise ValueError(f"{name} must have 1 or {self.channels} values (one per channel), got {len(v)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class TrainConfig(Section):
    epochs: int = Field(12, ge=0, le=10000)
    lr: float = Field(0.05, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65536)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)


HEAD_HELP = ("classifier head of a checkpoint trained on another label set: auto replaces every head whose class "
             "count differs from the data's (e.g. fc and AuxLogits.fc of an ImageNet inception_v3) and loads all other "
             "weights strictly; replace always re-initialises the heads; keep refuses a mismatch")


class FinetuneConfig(Section):
    epochs: int = Field(0, ge=0, le=10000, description="adapt a given teacher to the data for this many epochs (0: off; "
                                                       "head_epochs when its head was replaced)")
    lr: float = Field(0.01, gt=0, le=10)
    head_epochs: int = Field(5, ge=1, le=10000, description="finetune epochs when teacher.head replaced the "
                                                            "classifier and epochs is 0")
    backbone_lr_scale: float = Field(0.1, gt=0, le=1, description="after a head replacement the backbone trains at "
                                                                  "lr * this, the new head at lr")


class TeacherConfig(Section):
    model: str = Field("builtin:resnet8", description="builtin:NAME | torchvision:NAME | timm:NAME | pkg.mod:callable | file.py:callable")
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"width": 32},
                                   description="arguments of the model's builder (default {width: 32} for the built-in "
                                               "teacher; {} for any other model unless set)")
    checkpoint: Optional[str] = Field(None, description="weights to load instead of training the teacher here")
    allow_pickle: bool = Field(False, description="allow a pickled full model (unpickling runs code: only for files you trust)")
    head: Literal["auto", "replace", "keep"] = Field("auto", description=HEAD_HELP)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=8))
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    min_accuracy: Union[float, Literal["chance"]] = Field(
        "chance", description="stop before distillation when the teacher's validation accuracy is below this; chance: "
                              "when the lower end of its 99% Wilson interval is not above 1/classes")
    output: Union[StrictInt, str] = Field("auto", description=OUTPUT_HELP)

    @model_validator(mode="after")
    def _own_model_kwargs(self):
        # The built-in teacher's {width: 32} means nothing to another builder (torchvision:inception_v3 has no width).
        if "kwargs" not in self.model_fields_set and not self.model.startswith("builtin:"):
            self.kwargs = {}
        if isinstance(self.min_accuracy, float) and not 0 <= self.min_accuracy <= 1:
            raise ValueError("teacher.min_accuracy must be 0..1 or 'chance'")
        return self


class StudentConfig(Section):
    model: str = "builtin:small_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = Field(None, description="pretrained weights the student starts from (distillation "
                                                        "then trains it)")
    allow_pickle: bool = Field(False, description="allow a pickled full model (unpickling runs code: only for files you trust)")
    head: Literal["auto", "replace", "keep"] = Field("auto", description=HEAD_HELP)
    max_macs_ratio: float = Field(0.2, gt=0, le=1.0, description="warn when student MACs exceed this fraction of the teacher's")
    output: Union[StrictInt, str] = Field("auto", description=OUTPUT_HELP)


class DistillConfig(TrainConfig):
    epochs: int = Field(30, ge=0, le=10000)
    losses: list[LossTerm] = Field(default_factory=lambda: [t.model_copy() for t in DEFAULT_TERMS])
    cache_teacher_outputs: bool = Field(True, description="compute teacher logits once when inputs are deterministic")
    teacher_views: Optional[int] = Field(None, ge=0, le=64, description="with augmentation: teacher logits cached "
                                         "over this many pre-drawn augmented views per image, one teacher pass per "
                                         "view instead of one per epoch (0: teacher online; default: min(8, epochs // 4), "
                                         "so views from 4 epochs; feature terms keep the teacher online)")
    nproc: int = Field(1, ge=1, le=64, description="processes for DDP distillation under torchrun")


class PruneConfig(Section):
    enabled: bool = False
    method: Literal["structured", "unstructured"] = "structured"
    ratio: float = Field(0.5, ge=0, lt=1, description="fraction of channels (structured) or weights (unstructured) removed")
    target_macs_ratio: Optional[float] = Field(None, gt=0, lt=1, description="prune until MACs <= this fraction")
    global_pruning: bool = False
    steps: int = Field(1, ge=1, le=100)
    round_to: Optional[int] = Field(8, ge=1, le=1024)
    exclude: list[str] = Field(default_factory=list, description="module paths never pruned (the classifier always is)")
    # Structured + benchmark.enabled: also measure the INT8 latency ratio (ONNX Runtime U8S8 QDQ, batch 1); above
    # int8_threshold, name the modules that hold it and measure other round_to values as the fix (offered, never
    # applied). Costs a few seconds on small students (pipeline/prune_int8.py).
    int8_check: bool = Field(True, description="measure INT8 latency before/after structured pruning and, when it "
                                               "does not follow the MACs, search a round_to that does")
    int8_threshold: float = Field(0.75, gt=0, le=10, description="INT8 latency ratio (pruned/unpruned) above which "
                                                                 "the prune stage names the modules and searches a fix")
    # KD recovery after pruning (with the distill losses). Measured on digits, default student, ratio 0.5 (0.25x
    # MACs): 30 epochs at lr 0.02 lost no test accuracy for seeds 0, 1, 2; 10-20 epochs lost 0.6-1.7 points (seed 0).
    recovery: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=30, lr=0.02))


class ExportConfig(Section):
    opset: int = Field(17, ge=13, le=21)
    max_abs_diff: float = Field(1e-3, gt=0, description="parity gate: max |logit difference| ONNX Runtime vs PyTorch")
    min_top1_agreement: float = Field(0.999, ge=0, le=1)


class CalibrationConfig(Section):
    samples: int = Field(256, ge=1, le=100000)
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    bins: int = Field(2048, ge=128, le=65536, description="histogram bins for entropy/percentile")
    seed: int = Field(0, ge=0, le=SEED_MAX, description=SEED_HELP)


class QuantizeConfig(Section):
    enabled: bool = True
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="budget vs the FP32 student, defended on the validation split")
    fallback: bool = Field(True, description="keep the most sensitive layers in higher precision until the budget holds")
    max_fallback_layers: int = Field(8, ge=0, le=10000)
    test_gate: Literal["stats", "hard", "off"] = Field(
        "stats", description="test split: fail when the drop exceeds the budget and is statistically real (stats), "
                             "on any drop over the budget (hard), or never (off); the budget is decided on validation")
    # ptq: post-training only; qat: always fine-tune with fake quantization (QAD) and ship that; auto: PTQ
    # (with the fallback), then QAD when the budget is still missed on the validation split.
    mode: Literal["ptq", "qat", "auto"] = "auto"
    qat: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=4, lr=0.005),
                             description="quantization-aware distillation (pipeline/qat/)")
    # latency: keep in float the set of layers that holds the budget at the least measured latency
    # (pipeline/mixed_precision.py); layers: the most sensitive layers one by one (fewest layers).
    fallback_objective: Literal["latency", "layers"] = "latency"
    max_fallback_trials: int = Field(6, ge=1, le=64, description="float-layer sets built and measured by the latency objective")
    ship: Literal["faster", "int8", "fp32"] = Field(
        "faster", description="what the bundle ships: faster = the INT8 (or mixed) model unless it measured slower "
                              "than FP32 here beyond the spread (then FP32, said in the summary); int8 = always "
                              "the INT8 model; fp32 = always the FP32 model")
    emulate: bool = Field(False, description=(
        "compute INT8 accuracy with the target's own kernels under qemu-x86_64 -cpu <model> (qemu-user) when this "
        "host's instruction-set class differs from the target's (x86-64-v2/v3 targets); several times slower; "
        "latency is never measured under emulation"))


class BenchmarkConfig(Section):
    enabled: bool = True
    repeats: int = Field(3, ge=1, le=50)
    warmup: int = Field(20, ge=0, le=1_000_000)
    min_iters: int = Field(50, ge=1, le=10_000_000)
    min_time_s: float = Field(0.5, gt=0)
    max_time_s: float = Field(20.0, gt=0)
    batch: int = Field(1, ge=1, le=65536)
    threads: Optional[int] = Field(None, ge=1, le=1024, description="default: the profile's threads, capped by this host's cores")


class Recipe(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0, le=SEED_MAX, description=SEED_HELP)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where teacher training, finetune, distillation "
                                                   "and pruning recovery run (auto: CUDA when present)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training autocast (auto: bf16 on GPUs that have it else fp16, bf16 on CPUs with "
                            "native bf16, else fp32); evaluation is fp32")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="CPU threads for training (default: all cores, or OMP_NUM_THREADS when set; never above it)")
    channels_last: Optional[bool] = Field(None, description="train in channels_last memory format (default: on CUDA "
                                          "only; on the CPU torch 2.13 crashes in some 1x1 stride-2 conv backward passes)")
    targets: list[str] = Field(default_factory=lambda: ["jetson"])
    isa: dict[str, str] = Field(default_factory=dict, description=(
        "instruction-set class each CPU target deploys to, overriding its profile (targets/isa.py), e.g. "
        "{x86: avx512-vnni}; 'host' means this build host's class. It decides the INT8 scheme (reduce_range, "
        "overflow_fix) and the kernels emulation runs"))
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    @field_validator("targets")
    @classmethod
    def _targets_nonempty(cls, v):
        if not v:
            raise ValueError("at least one target is needed")
        return v


# --------------------------------------------------------------------------- loading


def _parse_value(text: str) -> Any:
    """A --set value is YAML (so 3, 0.5, true, [a, b] mean what they look like), never eval'd."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}... nests too deeply", hint="give a plain value") from None


def apply_set(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not of the form dotted.key=value",
                          hint="e.g. --set distill.epochs=5")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r} has an empty key", hint="e.g. --set distill.epochs=5")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(raw)


def _describe_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<recipe>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field (check the spelling; `python -m pipeline run --print-config` shows every field)"
    value = err.get("input")
    try:
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    except (ValueError, RecursionError):  # a YAML alias can make a value contain itself
        shown = "<a value that contains itself>"
    if len(shown) > 200:
        shown = shown[:200] + "..."
    allowed = ""
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        allowed = f" (allowed: {ctx['expected']})"
    elif err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        allowed = _allowed_range(err["loc"])
    return f"{loc} = {shown}: {msg}{allowed}"


def _allowed_range(loc) -> str:
    """` (allowed: LOW..HIGH)` for a numeric field, read from the schema's own bounds."""
    import annotated_types as at

    model: Any = Recipe
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return ""
        info = fields[part]
        model = info.annotation
        args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if args:
            model = args[0]
    if info is None:
        return ""
    lo: Any = None
    hi: Any = None
    lo_op, hi_op = ">=", "<="
    for m in info.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_op = m.gt, ">"
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_op = m.lt, "<"
    if lo is not None and hi is not None:
        return f" (allowed: {lo_op} {lo} and {hi_op} {hi})" if (lo_op, hi_op) != (">=", "<=") else \
            f" (allowed: {lo}..{hi})"
    if lo is not None:
        return f" (allowed: {lo_op} {lo})"
    if hi is not None:
        return f" (allowed: {hi_op} {hi})"
    return ""


def validate_recipe(data: dict, origin: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_describe_error(dict(err)) for err in e.errors()]
        raise ConfigError(f"invalid {origin}: " + "; ".join(lines),
                          hint="fix the value(s) above in the recipe file or the --set option") from None
    except RecursionError:
        raise ConfigError(f"invalid {origin}: a value nests too deeply",
                          hint="fix the value(s) in the recipe file or the --set option") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    recipe with two `epochs:` lines trained with whichever came second)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)):
            continue  # an unhashable (list/map) key: construct_mapping below refuses it as PyYAML does
        if key in seen:
            raise ConfigError(f"key '{key}' is given twice in one section (lines {seen[key]} and {line})",
                              hint=f"keep one of the two '{key}:' lines")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_recipe(path: str | Path | None = None, sets: Sequence[str] = (), targets: list[str] | None = None) -> Recipe:
    data: dict = {}
    origin = "default recipe"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file {p} does not exist", hint="check the --config path")
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
        except ConfigError as e:
            raise ConfigError(f"recipe {p}: {e.message}", hint=e.hint) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"recipe {p} is not valid YAML{where}: {getattr(e, 'problem', e)}",
                              hint="fix the YAML syntax (indentation, colons, quotes)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {p} is not a UTF-8 text file", hint="pass a YAML recipe") from None
        except RecursionError:
            raise ConfigError(f"recipe {p} nests too deeply to be a recipe", hint="start from `python -m pipeline init`") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {p} must be a YAML mapping of sections, got {type(loaded).__name__}",
                              hint="start from `python -m pipeline init`")
        data = loaded
        origin = f"recipe {p}"
    for s in sets:
        apply_set(data, s)
    if sets:
        origin = "--set value" if path is None else f"{origin} with --set values"
    if targets:
        data["targets"] = list(targets)
    return validate_recipe(data, origin)


def _field_description(path: list[str]) -> str | None:
    """The schema's description of a dotted field path (None when the field has none)."""
    model: Any = Recipe
    info = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = args[0] if args else None
    return info.description if info is not None else None


def recipe_to_yaml(recipe: Recipe, explain: bool = False) -> str:
    """The recipe as YAML; `explain`: each field preceded by its description from the schema, as a comment."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if not explain:
        return text
    import re

    out: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            desc = _field_description([k for _, k in stack])
            if desc:
                out.append(f"{m.group(1)}# {desc}")
        out.append(line)
    return "\n".join(out) + "\n"

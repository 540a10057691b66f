"""Device profiles: data files (YAML) describing an edge target, and their loader.

A profile says which backend compiles for the device, what the device is (CPU arch, accelerator, memory),
the published or derived peak figures with their source, the runtime versions expected on the device,
and the efficiency factors the roofline estimator (targets/estimate.py) applies to those peaks.

Built-in profiles live in ``targets/profiles/*.yaml`` (one profile per file). Users add or override
profiles with their own files or directories::

    profiles = load_profiles(["my_profiles/"])
    prof = resolve_profile("jetson", profiles)     # -> the jetson-orin-nano profile

Every error (bad YAML, unknown field, unknown name) is a ``pipeline.errors.ConfigError`` naming the file
and the field path.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"

Backend = Literal["tensorrt", "openvino", "litert", "onnxruntime"]
Precision = Literal["int8", "fp16", "fp32"]

#: profile peak field used by the estimator for each precision (value unit: 1e12 operations per second,
#: one multiply-accumulate = 2 operations).
PEAK_FIELD: dict[str, str] = {"int8": "int8_tops", "fp16": "fp16_tflops", "fp32": "fp32_tflops"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Figure(_Strict):
    """One number with where it comes from. ``value`` is null when the figure is unknown or absent."""

    value: float | None
    source: str = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v


class Peaks(_Strict):
    """Peak figures the estimator uses. Compute peaks are what the estimator's backend can use on the
    device (for Jetson: the dense GPU figure, not the module's sparse GPU+DLA marketing number)."""

    int8_tops: Figure
    fp16_tflops: Figure
    fp32_tflops: Figure | None = None
    memory_bandwidth_gbs: Figure
    memory_gb: Figure


class Runtime(_Strict):
    """Runtime versions expected on the device (null: not used on this target)."""

    jetpack: str | None = None
    tensorrt: str | None = None
    openvino: str | None = None
    litert: str | None = None
    onnxruntime: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _version_to_str(cls, v: Any) -> Any:
        # YAML reads an unquoted 6.2 as a float; accept it but keep versions as text.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        return v


class Efficiency(_Strict):
    """Fraction of a peak that real small-batch CNN inference attains, with how it was chosen."""

    value: float = Field(gt=0, le=1)
    source: str = Field(min_length=1)


class Profile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    aliases: list[str] = Field(default_factory=list)
    description: str
    backend: Backend
    cpu_arch: Literal["aarch64", "x86_64"]
    accelerator: str | None = None
    #: instruction-set class of the device's CPU (targets/isa.py), which decides the INT8 scheme and kernels;
    #: null for accelerator targets whose integer math is not the CPU's (TensorRT on a Jetson GPU)
    isa: str | None = None
    default_precision: Precision
    threads: int = Field(ge=1)
    batch_sizes: list[int] = Field(min_length=1)
    input_layout: Literal["nchw", "nhwc"] = "nchw"
    peaks: Peaks
    runtime: Runtime = Field(default_factory=Runtime)
    #: fraction of the compute peak attained (estimator's compute term)
    efficiency: Efficiency
    #: fraction of the memory bandwidth attained (estimator's memory term)
    memory_efficiency: Efficiency
    #: fixed time per non-fused layer (kernel launch, scheduling), in microseconds
    layer_overhead_us: Figure
    estimate_precision: Precision
    notes: str = ""

    @field_validator("aliases")
    @classmethod
    def _aliases_lower(cls, v: list[str]) -> list[str]:
        out = [a.strip().lower() for a in v]
        for a in out:
            if not a:
                raise ValueError("empty alias")
        if len(set(out)) != len(out):
            raise ValueError(f"repeated alias in {out}")
        return out

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        if self.isa is not None:
            from targets.isa import ISA_CLASSES

            known = [n for n, c in ISA_CLASSES.items() if c.arch == self.cpu_arch]
            if self.isa not in known:
                raise ValueError(f"isa '{self.isa}' is not an instruction-set class of {self.cpu_arch}; "
                                 f"use one of {', '.join(known)}")
        if self.name in self.aliases:
            raise ValueError(f"alias '{self.name}' repeats the profile name")
        fig = self.peak_figure(self.estimate_precision)
        if fig is None or fig.value is None or fig.value <= 0:
            raise ValueError(
                f"estimate_precision is {self.estimate_precision} but peaks.{PEAK_FIELD[self.estimate_precision]}"
                " has no positive value")
        if self.layer_overhead_us.value is None:
            raise ValueError("layer_overhead_us.value must be a number (0 for none)")
        return self

    def peak_figure(self, precision: str) -> Figure | None:
        """The compute peak figure (unit 1e12 ops/s) for a precision, or None when the profile has none."""
        if precision not in PEAK_FIELD:
            raise ConfigError(f"unknown precision '{precision}'", hint="use one of int8, fp16, fp32")
        return getattr(self.peaks, PEAK_FIELD[precision])

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


# --------------------------------------------------------------------------------------------------------
# loading


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def load_profile_file(path: str | Path) -> Profile:
    """Read and validate one profile file; errors name the file and the field path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"profile file {path}: cannot read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"profile file {path}: invalid YAML{where}: {problem}",
                          hint="check indentation and quoting") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {path}: expected a mapping of profile fields, got "
                          f"{type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = _loc(tuple(err.get("loc", ())))
            msg = err.get("msg", "invalid")
            if err.get("type") == "extra_forbidden":
                msg = "unknown field"
            lines.append(f"field '{field}': {msg}")
        raise ConfigError(f"profile file {path}: " + "; ".join(lines),
                          hint="see targets/profiles/*.yaml for the expected fields") from None


def _profile_files(p: Path) -> list[Path]:
    if p.is_dir():
        return sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
    if p.is_file():
        return [p]
    raise ConfigError(f"profile path {p} does not exist", hint="give a YAML file or a directory of them")


def load_profiles(extra: Iterable[str | Path] = ()) -> dict[str, Profile]:
    """Built-in profiles plus user files/directories in ``extra``, keyed by profile name.

    A user profile whose name equals a built-in one replaces it. Two user files defining the same name,
    two built-ins with the same name, or an alias (or name) claimed by two profiles are errors.
    """
    profiles: dict[str, Profile] = {}
    origin: dict[str, Path] = {}
    for f in _profile_files(BUILTIN_DIR):
        prof = load_profile_file(f)
        if prof.name in profiles:
            raise ConfigError(f"profile '{prof.name}' is defined twice: {origin[prof.name]} and {f}")
        profiles[prof.name] = prof
        origin[prof.name] = f
    builtin = set(profiles)
    user_seen: dict[str, Path] = {}
    if isinstance(extra, (str, Path)):
        extra = [extra]
    for item in extra:
        for f in _profile_files(Path(item)):
            prof = load_profile_file(f)
            if prof.name in user_seen:
                raise ConfigError(f"profile '{prof.name}' is defined twice: {user_seen[prof.name]} and {f}")
            if prof.name in profiles and prof.name not in builtin:
                raise ConfigError(f"profile '{prof.name}' is defined twice: {origin[prof.name]} and {f}")
            user_seen[prof.name] = f
            profiles[prof.name] = prof  # overrides a built-in of the same name
            origin[prof.name] = f
    # every name and alias must point at exactly one profile
    owner: dict[str, str] = {}
    for prof in profiles.values():
        for n in prof.names:
            if n in owner and owner[n] != prof.name:
                raise ConfigError(
                    f"'{n}' names two profiles: '{owner[n]}' ({origin[owner[n]]}) and '{prof.name}' "
                    f"({origin[prof.name]})", hint="rename or drop the alias in one of the files")
            owner[n] = prof.name
    return profiles


def known_names(profiles: dict[str, Profile]) -> str:
    """'name (aliases: a, b), name2, ...' for messages."""
    parts = []
    for name in sorted(profiles):
        al = profiles[name].aliases
        parts.append(f"{name} (aliases: {', '.join(al)})" if al else name)
    return ", ".join(parts)


def resolve_profile(name_or_alias: str, profiles: dict[str, Profile] | None = None) -> Profile:
    """The profile called ``name_or_alias`` (a name or an alias, case-insensitive)."""
    if profiles is None:
        profiles = load_profiles()
    key = str(name_or_alias).strip().lower()
    for prof in profiles.values():
        if key in prof.names:
            return prof
    every = [n for p in profiles.values() for n in p.names]
    close = difflib.get_close_matches(key, every, n=1, cutoff=0.6)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"unknown target '{name_or_alias}'.{suggestion} Known targets: {known_names(profiles)}",
        hint=(f"use '{close[0]}'" if close else "pick one of the names above, or add a profile YAML file"),
    )


def apply_isa_overrides(profiles: dict[str, Profile], overrides: dict[str, str]) -> dict[str, Profile]:
    """Profiles with the recipe's `isa:` overrides applied ({target name or alias: class or 'host'})."""
    from targets.isa import ISA_CLASSES, host_isa

    out = dict(profiles)
    for key, value in overrides.items():
        prof = resolve_profile(key, profiles)
        want = str(value).strip().lower()
        if want == "host":
            want = host_isa() or ""
            if not want or ISA_CLASSES[want].arch != prof.cpu_arch:
                raise ConfigError(f"isa.{key}=host: this host ({want or 'unknown class'}) is not a {prof.cpu_arch} "
                                  f"CPU like {prof.name}", hint=f"name a {prof.cpu_arch} class instead")
        known = [n for n, c in ISA_CLASSES.items() if c.arch == prof.cpu_arch]
        if prof.isa is None and prof.accelerator:
            raise ConfigError(f"isa.{key}: {prof.name} computes INT8 on its accelerator ({prof.backend}), not with "
                              "CPU kernels; its instruction set does not change the numbers", hint=f"drop isa.{key}")
        if want not in known:
            raise ConfigError(f"isa.{key}: unknown instruction-set class '{value}' for {prof.cpu_arch}",
                              hint=f"use one of {', '.join(known)} or 'host'")
        out[prof.name] = prof.model_copy(update={"isa": want})
    return out

"""Collection configs: YAML sections `model`, `inference`, `data`, `output` (and optional `sae`),
validated into frozen dataclasses whose errors name the offending key and the valid ones."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from mlux.atomic import PathLike
from mlux.untrusted import short

from .config_checks import UniqueKeyLoader, _choice, _fail, _int, _number, _type

__all__ = [
    "BALANCE_STRATEGIES",
    "MAX_CONFIG_BYTES",
    "MODEL_DTYPES",
    "POSITIONS",
    "SAE_KINDS",
    "STORE_DTYPES",
    "CollectConfig",
    "DataSection",
    "InferenceSection",
    "ModelSection",
    "OutputSection",
    "SAESection",
    "config_from_dict",
    "load_config",
    "section",
]

POSITIONS = ("last", "mean", "all", "generated")
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")
STORE_DTYPES = ("float32", "float16")
BALANCE_STRATEGIES = ("use_all", "equalize")
SAE_KINDS = ("topk", "relu")

SpecValue = Union[str, int, tuple[Union[str, int], ...]]


@dataclass(frozen=True)
class ModelSection:
    """Which model to load, its compute dtype, and the hook points to record (layer specs)."""

    name: str
    dtype: str = "auto"
    activation_layers: SpecValue = "all"

    def __post_init__(self) -> None:
        _type("model.name", self.name, str, "a model directory, hub id or built-in name")
        if not self.name.strip():
            raise _fail("model.name", "is empty")
        _choice("model.dtype", self.dtype, MODEL_DTYPES)
        spec = self.activation_layers
        items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        if not items or any(isinstance(s, bool) or not isinstance(s, (str, int)) for s in items):
            raise _fail("model.activation_layers", "must be a layer spec string ('all', "
                        "'residuals_10-21', 'mlp_all', ...), an int, or a list of these; "
                        f"got {short(spec)}")
        if isinstance(spec, list):
            object.__setattr__(self, "activation_layers", tuple(spec))


@dataclass(frozen=True)
class InferenceSection:
    """How prompts are run: batch size, generation length, and which token positions to keep."""

    batch_size: int = 8
    max_new_tokens: int = 0
    save_activations: bool = True
    positions: tuple[str, ...] = ("last",)
    chat_template: bool = False

    def __post_init__(self) -> None:
        _int("inference.batch_size", self.batch_size, 1)
        _int("inference.max_new_tokens", self.max_new_tokens, 0)
        _type("inference.save_activations", self.save_activations, bool, "true or false")
        _type("inference.chat_template", self.chat_template, bool, "true or false")
        positions = self.positions
        positions = (positions,) if isinstance(positions, str) else positions
        if not isinstance(positions, (list, tuple)) or not positions:
            raise _fail("inference.positions", f"must be one of {', '.join(POSITIONS)} or a "
                                               f"list of them; got {short(self.positions)}")
        for p in positions:
            _choice("inference.positions", p, POSITIONS)
        object.__setattr__(self, "positions", tuple(dict.fromkeys(positions)))
        if "generated" in self.positions and self.max_new_tokens == 0:
            raise _fail("inference.positions", "'generated' needs inference.max_new_tokens > 0")
        if not self.save_activations and self.max_new_tokens == 0:
            raise _fail("inference.save_activations", "is false and max_new_tokens is 0: "
                                                      "there would be nothing to collect")


@dataclass(frozen=True)
class DataSection:
    """Where the prompts are and how categories are chosen and balanced."""

    path: str
    categories: tuple[str, ...] = ()
    category_balance_strategy: str = "use_all"
    max_samples_per_category: Optional[int] = None
    text_field: str = "text"
    category_field: str = "category"
    seed: int = 0

    def __post_init__(self) -> None:
        _type("data.path", self.path, str, "a path to a JSONL or CSV file or a folder")
        cats = self.categories
        if cats is None:
            cats = ()
        if not isinstance(cats, (list, tuple)) or not all(isinstance(c, str) for c in cats):
            raise _fail("data.categories", f"must be a list of category names, got {short(cats)}")
        repeated = sorted({c for c in cats if list(cats).count(c) > 1})
        if repeated:
            raise _fail("data.categories", f"lists {', '.join(map(repr, repeated))} more than once")
        object.__setattr__(self, "categories", tuple(cats))
        _choice("data.category_balance_strategy", self.category_balance_strategy,
                BALANCE_STRATEGIES)
        _int("data.max_samples_per_category", self.max_samples_per_category, 1, optional=True)
        _type("data.text_field", self.text_field, str, "a field name")
        _type("data.category_field", self.category_field, str, "a field name")
        _int("data.seed", self.seed, 0)


@dataclass(frozen=True)
class OutputSection:
    """Where shards go, how many samples one shard holds, and the stored dtype."""

    result_dir: str
    shard_size: int = 256
    activation_dtype: str = "float32"

    def __post_init__(self) -> None:
        _type("output.result_dir", self.result_dir, str, "a directory path")
        if not self.result_dir.strip():  # "" would silently mean the current folder
            raise _fail("output.result_dir", "is empty; give a folder (\".\" for the current "
                                             "one)")
        _int("output.shard_size", self.shard_size, 1)
        _choice("output.activation_dtype", self.activation_dtype, STORE_DTYPES)


@dataclass(frozen=True)
class SAESection:
    """Sparse-autoencoder training settings (`mlux train-sae`); all optional."""

    kind: str = "topk"
    num_latents: Optional[int] = None  # None: expansion * hidden size
    expansion: int = 4
    k: int = 32
    l1_coeff: float = 1e-3
    learning_rate: float = 1e-3
    batch_size: int = 256
    epochs: int = 5
    max_steps: Optional[int] = None
    shuffle_buffer: int = 8192
    position: str = "last"
    hook_points: Optional[SpecValue] = None  # None: every collected hook point
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("sae.kind", self.kind, SAE_KINDS)
        _int("sae.num_latents", self.num_latents, 1, optional=True)
        for name in ("expansion", "k", "batch_size", "epochs", "shuffle_buffer"):
            _int(f"sae.{name}", getattr(self, name), 1)
        _int("sae.max_steps", self.max_steps, 1, optional=True)
        _int("sae.seed", self.seed, 0)
        _number("sae.l1_coeff", self.l1_coeff, positive=False)
        _number("sae.learning_rate", self.learning_rate)
        _choice("sae.position", self.position, POSITIONS)
        if self.kind == "topk" and self.num_latents is not None and self.k > self.num_latents:
            raise _fail("sae.k", f"({self.k}) must be at most sae.num_latents "
                                 f"({self.num_latents})")
        if isinstance(self.hook_points, list):
            object.__setattr__(self, "hook_points", tuple(self.hook_points))


@dataclass(frozen=True)
class CollectConfig:
    model: ModelSection
    data: DataSection
    output: OutputSection
    inference: InferenceSection = field(default_factory=InferenceSection)
    sae: SAESection = field(default_factory=SAESection)
    source: Optional[Path] = None  # the YAML file: relative data paths resolve from it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples), without `source`."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name))
               for f in dataclasses.fields(self) if f.name != "source"}
        return _listify(out)

    def replace(self, section: str, **changes: Any) -> CollectConfig:
        """A copy with some keys of one section changed (validated like the YAML)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(
            getattr(self, section), **changes)})


_SECTIONS: Mapping[str, type] = {
    "model": ModelSection, "inference": InferenceSection, "data": DataSection,
    "output": OutputSection, "sae": SAESection,
}
_REQUIRED = ("model", "data", "output")
MAX_CONFIG_BYTES = 1 << 20


def _listify(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def _unknown(where: str, keys: list[str], valid: list[str]) -> ValueError:
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(short(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(f"config {where}: unknown key{'s' if len(keys) > 1 else ''} "
                      f"{', '.join(hints)}; valid keys: {', '.join(valid)}")


def section(name: str, raw: Any) -> Any:
    """One validated section (`"sae"`, `"model"`, ...) from its parsed mapping."""
    cls = _SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise _fail(name, f"must be a mapping of keys to values, got {short(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise _unknown(f"section {name!r}", unknown, list(fields))
    missing = [n for n, f in fields.items() if n not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _fail(name, f"missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}")
    return cls(**raw)


def config_from_dict(raw: Any, *, source: Optional[PathLike] = None) -> CollectConfig:
    """Validate a parsed config mapping; raises ValueError naming the bad key and valid ones."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"config must be a mapping with sections {', '.join(_SECTIONS)}; "
                         f"got {type(raw).__name__}")
    unknown = [k for k in raw if k not in _SECTIONS]
    if unknown:
        raise _unknown("top level", unknown, list(_SECTIONS))
    missing = [s for s in _REQUIRED if s not in raw]
    if missing:
        raise ValueError(f"config is missing section{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (required: {', '.join(_REQUIRED)})")
    sections = {name: section(name, raw[name]) for name in _SECTIONS if name in raw}
    return CollectConfig(**sections, source=Path(source) if source else None)


def load_config(path: PathLike) -> CollectConfig:
    """Read and validate a YAML config file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist" if not p.exists()
                                else f"config path {p} is not a file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config {p} is {p.stat().st_size} bytes; a collection config is "
                         f"at most {MAX_CONFIG_BYTES} (prompts belong in data.path)")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8-sig"), Loader=UniqueKeyLoader)
    except RecursionError:
        raise ValueError(f"config {p}: nested too deeply to be a collection config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "refused" if isinstance(e, yaml.constructor.ConstructorError) else "malformed YAML"
        raise ValueError(f"config {p}: {kind}{where}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config {p}: not UTF-8 text ({e.reason})") from None
    if raw is None:
        raise ValueError(f"config {p} is empty; it needs sections {', '.join(_REQUIRED)}")
    try:
        return config_from_dict(raw, source=p)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    except TypeError as e:  # e.g. a list where a section's keys were expected
        raise ValueError(f"{p}: invalid config: {e}") from None

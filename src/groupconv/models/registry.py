"""The model registry, with timm's interface: `register_model`, `create_model`, `list_models`.

Each family file registers its builders at import time; `groupconv.models` imports every family,
so the registry is complete as soon as the package is imported. A registry entry also records
the input size the model was designed for and whether it has a small-input (32x32) variant, so
tests, benchmarks and the command line can feed every model without knowing its family.

Tags mark what sets an entry apart from the published image networks, so that a caller can pick or
skip it (`list_models(tag=...)`, `exclude_tag=`):
- "1d": takes 1-D signals (channels, length), not images; image-only checks (channels_last) skip it.
- "study": built for groupconv's own training studies (`groupconv experiment`, MNIST-1D), not a paper's network.

An entry may carry a default training recipe (as timm's per-model default configs): the training
options its paper used where the library's defaults (made for batch-normalised networks) do not fit,
e.g. AlexNet's SGD at lr 0.01. `groupconv train` applies them unless the user gives the option.
"""

from __future__ import annotations

import difflib
import fnmatch
import types
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

# The input a small-input variant (small_input=True) is built for: CIFAR-size images.
SMALL_INPUT_SIZE = (3, 32, 32)

TAGS = ("1d", "study")  # see the module's docstring


@dataclass(frozen=True)
class Recipe:
    """Training options a model needs (keys and values as groupconv.train's TrainConfig), and where they come from."""

    options: Mapping[str, object] = field(default_factory=lambda: types.MappingProxyType({}))
    source: str = ""  # the paper (authors, year) or the reason for each option

    def __post_init__(self):
        # read-only, nested model_kwargs included: an entry is shared by every caller of the registry
        options = {key: types.MappingProxyType(dict(value)) if isinstance(value, Mapping) else value
                   for key, value in self.options.items()}
        object.__setattr__(self, "options", types.MappingProxyType(options))

    def __hash__(self):
        return hash((repr(sorted((key, repr(value)) for key, value in self.options.items())), self.source))


NO_RECIPE = Recipe()


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model name."""

    name: str
    builder: Callable[..., torch.nn.Module]
    family: str  # the family file that defines it, e.g. "shufflenet"
    input_size: tuple[int, ...]  # (channels, height, width) of the paper's input; (channels, length) for "1d"
    has_small_input: bool  # whether the builder accepts small_input=True (then the input is SMALL_INPUT_SIZE)
    tags: frozenset[str] = frozenset()  # see TAGS
    recipe: Recipe = NO_RECIPE  # default training options (see the module's docstring)

    @property
    def small_input_size(self) -> tuple[int, int, int]:
        """Smallest natural input: the small-input variant's if there is one, else the model's own."""
        return SMALL_INPUT_SIZE if self.has_small_input else self.input_size


_registry: dict[str, ModelEntry] = {}


def register_model(builder=None, *, name: str | None = None, input_size=(3, 224, 224), small_input: bool = False,
                   tags=(), recipe: Recipe = NO_RECIPE):
    """Register a model builder under `name` (default: the function's name).

    Usable bare (`@register_model`), with options (`@register_model(input_size=(3, 32, 32))`), or
    called directly for builders made in a loop (`register_model(fn, name="shufflenet_g3_w1")`).
    `small_input=True` declares that the builder accepts `small_input=True` and then expects
    SMALL_INPUT_SIZE inputs. `tags`: any of TAGS. `recipe`: the model's default training options.
    Registering a name twice is an error: two families must never silently shadow each other.
    """
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise ValueError(f"tags={sorted(tags)}: unknown tag(s) {sorted(unknown)}, choose from {TAGS}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")

    def register(fn):
        model_name = name or fn.__name__
        if model_name in _registry:
            raise ValueError(f"model name {model_name!r} is already registered (by {_registry[model_name].family})")
        family = fn.__module__.rsplit(".", 1)[-1]
        _registry[model_name] = ModelEntry(model_name, fn, family, tuple(input_size), small_input, frozenset(tags),
                                          recipe)
        return fn

    return register if builder is None else register(builder)


def list_models(pattern: str = "*", family: str | None = None, tag: str | None = None,
                exclude_tag: str | None = None) -> list[str]:
    """Registered model names matching an fnmatch `pattern` (as timm: "shufflenet_g3_*"), sorted; optionally
    only those of one `family`, only those with `tag`, and none with `exclude_tag`."""
    for option, value in (("tag", tag), ("exclude_tag", exclude_tag)):
        if value is not None and value not in TAGS:
            raise ValueError(f"{option}={value!r} is not a model tag: choose from {', '.join(TAGS)}")
    return sorted(
        name for name, entry in _registry.items()
        if fnmatch.fnmatchcase(name, pattern) and (family is None or entry.family == family)
        and (tag is None or tag in entry.tags) and (exclude_tag is None or exclude_tag not in entry.tags)
    )


def is_model(name: str) -> bool:
    return name in _registry


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; an unknown name is a ValueError that lists the closest registered names."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _registry:
        close = difflib.get_close_matches(name, list(_registry), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see groupconv.models.list_models()"
        raise ValueError(f"unknown model {name!r}: {hint}")
    return _registry[name]


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs) -> torch.nn.Module:
    """Build a registered model; `num_classes` and `in_chans` default to the model's own (ImageNet 1000 / CIFAR 10, 3).

    Other keyword arguments go to the builder (e.g. small_input=True, shuffle=False, block_form="a").
    """
    entry = model_entry(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return entry.builder(**kwargs)

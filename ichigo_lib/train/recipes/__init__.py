"""torchtune's stock recipes, run unchanged after the few patches this project needs.

``tune run`` is given ``ichigo_lib/train/recipes/<name>.py`` (see
:func:`ichigo_lib.train.launch.recipe_path`) and imports it as the module
``ichigo_lib.train.recipes.<name>``; that module calls :func:`stock_recipe_main`, which loads the
stock recipe file shipped with torchtune and runs its own entry point.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torchtune
from omegaconf import DictConfig
from torchtune import config, training

STOCK_RECIPES = Path(torchtune.__file__).parent.parent / "recipes"


def load_stock_recipe(name: str) -> ModuleType:
    """The stock recipe module ``recipes/<name>.py`` installed with torchtune (not a package)."""
    path = STOCK_RECIPES / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"torchtune ships no recipe {path}")
    spec = importlib.util.spec_from_file_location(f"torchtune_recipes.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def neutralise_cpu_memory_calls() -> None:
    """Make the CUDA-only memory calls of the distributed recipes no-ops on a CPU run.

    Rank 0 logs device memory after building the model whatever ``log_peak_memory_stats`` says
    (``training.get_memory_stats`` raises on CPU), and ``training.cleanup_before_training`` calls
    ``torch.cpu.empty_cache`` / ``torch.cpu.reset_peak_memory_stats``, which do not exist.
    """
    training.get_memory_stats = lambda *args, **kwargs: {}
    training.log_memory_stats = lambda *args, **kwargs: None
    for name in ("empty_cache", "reset_peak_memory_stats"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda *args, **kwargs: None)


def slice_passes(stock: ModuleType, samples: int, period_samples: int) -> None:
    """Make the recipe's epochs read consecutive slices of one pass
    (:class:`~ichigo_lib.train.sampler.PassSliceSampler` in place of its sampler)."""
    from ichigo_lib.train.sampler import PassSliceSampler

    stock.StatefulDistributedSampler = functools.partial(
        PassSliceSampler, samples=samples, period_samples=period_samples
    )


def stock_recipe_main(name: str) -> Callable[[], None]:
    """The entry point of stock recipe ``name``, patched as the config says.

    The returned function parses ``--config`` and overrides from ``sys.argv`` as torchtune does,
    applies :func:`neutralise_cpu_memory_calls` if ``device`` is ``cpu`` and
    :func:`slice_passes` if ``data_slices`` is set (a phase defined by epochs, see
    ``ichigo_lib.train.schedule``), then calls the stock ``recipe_main`` on the parsed config.
    """
    stock = load_stock_recipe(name)

    @config.parse
    def recipe_main(cfg: DictConfig) -> None:
        if cfg.device == "cpu":
            neutralise_cpu_memory_calls()
        slices = cfg.get("data_slices")
        if slices is not None:
            slice_passes(stock, int(slices.samples), int(slices.period_samples))
        return stock.recipe_main.__wrapped__(cfg)

    return recipe_main

"""ichigo_lib: the library every notebook of the Ichigo book imports as ``il``.

Submodules load on first use (``il.world``, ``il.runs``, ...), so light commands such as the
``ichigo`` CLI do not pay for importing torch, torchtune or transformers. Importing the package
installs the narrow noise filters of :mod:`ichigo_lib.quiet`.
"""

import importlib

from ichigo_lib import quiet

quiet.install()

__all__ = [
    "base_model",
    "checkpoints",
    "config",
    "data",
    "evaluate",
    "plots",
    "runner",
    "runs",
    "speech",
    "tokens",
    "train",
    "wordtok",
    "world",
]


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f"ichigo_lib.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ichigo_lib' has no attribute '{name}'")

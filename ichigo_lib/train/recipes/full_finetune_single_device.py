"""torchtune's stock ``full_finetune_single_device``.

Launched as ``tune run ichigo_lib/train/recipes/full_finetune_single_device.py --config
cfg.yaml``; the recipe code is torchtune's own, patched only as
:func:`~ichigo_lib.train.recipes.stock_recipe_main` says (a phase's epochs as slices of one pass).
"""

import sys

from ichigo_lib.train.recipes import stock_recipe_main

if __name__ == "__main__":
    sys.exit(stock_recipe_main("full_finetune_single_device")())

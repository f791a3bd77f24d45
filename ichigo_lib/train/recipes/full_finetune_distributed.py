"""torchtune's stock ``full_finetune_distributed`` (FSDP2), also on CPU with gloo.

Launched as ``tune run --nproc_per_node N ichigo_lib/train/recipes/full_finetune_distributed.py
--config cfg.yaml``; the recipe code is torchtune's own, only its CUDA-only memory calls are
neutralised when ``device: cpu``.
"""

import sys

from ichigo_lib.train.recipes import stock_recipe_main

if __name__ == "__main__":
    sys.exit(stock_recipe_main("full_finetune_distributed")())

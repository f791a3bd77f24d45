"""Export a torchtune epoch checkpoint as a standalone Hugging Face transformers directory.

torchtune's ``FullModelHFCheckpointer`` writes ``epoch_<n>/`` with HF-named weight shards, their
index, and copies of the start checkpoint's other files (``config.json``, tokenizer, chat
template). The export copies all of it, sets ``config.json``'s ``vocab_size`` and ``dtype`` from
the weights actually saved, checks the tokenizer (its ids fit the embeddings, a chat template,
the sound tokens) and appears at ``out_dir`` in one rename, never half written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open

from ichigo_lib.checkpoints import CheckpointError, safetensors_files

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
INDEX = "model.safetensors.index.json"
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _weight_files(ckpt_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file, from the index when there is one."""
    index = ckpt_dir / INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (ckpt_dir / f).exists()})
        if missing:
            raise CheckpointError(f"{index} names missing weight files {missing}")
        return weight_map
    out = {}
    for name in safetensors_files(ckpt_dir):
        with safe_open(ckpt_dir / name, "pt") as fh:
            out.update(dict.fromkeys(fh.keys(), name))
    return out


def _tensor_info(ckpt_dir: Path, weight_map: dict[str, str], name: str) -> tuple[list[int], str]:
    if name not in weight_map:
        raise CheckpointError(f"{ckpt_dir}: no tensor {name} in the weights")
    with safe_open(ckpt_dir / weight_map[name], "pt") as fh:
        tensor = fh.get_slice(name)
        return tensor.get_shape(), tensor.get_dtype()


def _check_tokenizer(export_dir: Path, vocab_size: int, sound_tokens: bool, origin: Path) -> None:
    from transformers import AutoTokenizer

    from ichigo_lib.tokens import sound_vocab_of

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{origin}: the tokenizer has {len(tokenizer)} tokens, more than the "
            f"{vocab_size} embedding rows of the weights"
        )
    if not tokenizer.chat_template:
        raise CheckpointError(f"{origin}: the tokenizer has no chat template")
    if sound_tokens:
        sound_vocab_of(tokenizer)  # raises naming what is missing or out of order


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path, sound_tokens: bool = True) -> Path:
    """Write ``checkpoint_dir`` (a torchtune ``epoch_<n>`` directory) to ``out_dir`` as a
    transformers model directory (``AutoModelForCausalLM`` / ``AutoTokenizer``).

    ``sound_tokens``: the tokenizer must hold the 515 Ichigo sound tokens (False for a text-only
    model). The directory is built next to ``out_dir`` and renamed into place; an existing
    ``out_dir`` is replaced only once the new one is complete.
    """
    ckpt_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    config_path = ckpt_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{ckpt_dir}: no config.json (not an HF-format checkpoint)")
    if out_dir.resolve() == ckpt_dir.resolve() or ckpt_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"export directory {out_dir} lies inside the checkpoint {ckpt_dir}")
    weight_map = _weight_files(ckpt_dir)
    (rows, _), dtype = _tensor_info(ckpt_dir, weight_map, EMBED)
    if HEAD in weight_map and _tensor_info(ckpt_dir, weight_map, HEAD)[0][0] != rows:
        raise CheckpointError(f"{ckpt_dir}: {HEAD} and {EMBED} have different vocabulary sizes")
    config = json.loads(config_path.read_text())
    config["vocab_size"] = rows
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = _DTYPES.get(dtype, dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copytree(
            ckpt_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "config.json")
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _check_tokenizer(tmp, rows, sound_tokens, ckpt_dir)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

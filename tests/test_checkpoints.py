"""HF checkpoints load through torchtune's checkpointer with the same logits as transformers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ichigo_lib.checkpoints import (
    CheckpointError,
    codebook_embeddings,
    fetch_hf_checkpoint,
    torchtune_llama_from_hf,
    validate_hf_checkpoint,
    write_llama_init,
    write_sound_init,
)
from ichigo_lib.config import LlamaArch
from ichigo_lib.tokens import NUM_CODES, audio_turn
from ichigo_lib.wordtok import WordTokenizer, build_word_tokenizer

ARCH = LlamaArch(
    num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=64
)


@pytest.fixture
def tiny_ckpt(tmp_path):
    return write_llama_init(ARCH, build_word_tokenizer(["a", "b", "c"]), tmp_path / "ckpt", seed=0)


def _same_logits(ckpt_dir, ids):
    hf = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).eval()
    tt = torchtune_llama_from_hf(ckpt_dir).eval()
    with torch.no_grad():
        return torch.allclose(hf(ids).logits, tt(ids), atol=1e-5)


def test_tiny_init_checkpoint_loads_in_torchtune_with_hf_logits(tiny_ckpt):
    ids = torch.randint(0, 10, (2, 12))
    assert _same_logits(tiny_ckpt, ids)


def _llama3_layout(tied: bool, factor: float) -> LlamaConfig:
    """A tiny config in the format of Meta's Llama-3.x checkpoints (vocab 128256, llama3 RoPE
    scaling): Llama-3.1-8B (untied, factor 8) or Llama-3.2-1B (tied, factor 32)."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


@pytest.mark.parametrize("tied, factor", [(False, 8.0), (True, 32.0)], ids=["3.1-8B", "3.2-1B"])
def test_llama3_layouts_with_scaled_rope_load_with_hf_logits(tmp_path, tied, factor):
    torch.manual_seed(0)
    LlamaForCausalLM(_llama3_layout(tied, factor)).save_pretrained(tmp_path)
    build_word_tokenizer(["x"]).save_pretrained(tmp_path)
    ids = torch.randint(0, 128256, (1, 200))
    assert _same_logits(tmp_path, ids)
    # the torchtune model shares its output with its input embedding exactly when HF does
    tt = torchtune_llama_from_hf(tmp_path)
    assert ("output.weight" not in tt.state_dict()) == tied


def test_tied_sound_init_stays_tied_and_keeps_old_logits(tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(_llama3_layout(True, 32.0)).save_pretrained(tmp_path / "base")
    build_word_tokenizer(["x"]).save_pretrained(tmp_path / "base")
    write_sound_init(tmp_path / "base", tmp_path / "init")
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "init", dtype=torch.float32).eval()
    assert new.config.tie_word_embeddings and new.lm_head.weight is new.model.embed_tokens.weight
    ids = torch.randint(0, 128256, (1, 40))
    with torch.no_grad():
        assert torch.allclose(old(ids).logits, new(ids).logits[..., :128256], atol=1e-5)
    assert _same_logits(tmp_path / "init", ids)


def test_local_directory_is_used_as_is(tiny_ckpt):
    assert fetch_hf_checkpoint(str(tiny_ckpt)) == tiny_ckpt.resolve()


def test_unreachable_hub_repo_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        CheckpointError, match="(?s)could not download 'meta-llama/Nope'.*local directory"
    ):
        fetch_hf_checkpoint("meta-llama/Nope", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no \\*.safetensors"),
        ("tokenizer.json", "no tokenizer.json"),
    ],
)
def test_incomplete_checkpoint_names_what_is_missing(tiny_ckpt, remove, message):
    (tiny_ckpt / remove).unlink()
    with pytest.raises(CheckpointError, match=message):
        validate_hf_checkpoint(tiny_ckpt)


def test_non_llama_checkpoint_is_rejected(tiny_ckpt):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    (tiny_ckpt / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="not llama"):
        validate_hf_checkpoint(tiny_ckpt)


def test_rope_scaling_torchtune_cannot_reproduce_is_refused(tiny_ckpt):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (tiny_ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unsupported RoPE scaling"):
        torchtune_llama_from_hf(tiny_ckpt)


def test_sound_init_adds_515_tokens_and_keeps_old_logits(tiny_ckpt, tmp_path):
    info = write_sound_init(tiny_ckpt, tmp_path / "init")
    assert info["vocab_size"] - info["old_vocab_size"] == NUM_CODES + 2
    old = AutoModelForCausalLM.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "init", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        a, b = old(ids).logits, new(ids).logits
    torch.testing.assert_close(b[..., : info["old_vocab_size"]], a)
    emb = new.get_input_embeddings().weight
    torch.testing.assert_close(emb[info["sound_start_id"]], emb[: info["old_vocab_size"]].mean(0))
    assert _same_logits(tmp_path / "init", torch.tensor([[1, info["first_sound_id"] + 7]]))


def test_codebook_sound_init_mirrors_the_codebook_and_keeps_old_logits(tiny_ckpt, tmp_path):
    """Cosine-near codes get near input rows, at a word's scale; output rows stay the mean."""
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(NUM_CODES - 1, 8, generator=gen)
    codebook[1] = codebook[0] * 3 + 0.01 * torch.randn(8, generator=gen)  # code 1 ~ code 0
    info = write_sound_init(tiny_ckpt, tmp_path / "init", codebook)
    assert info["sound_embeddings"] == "codebook"
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "init", dtype=torch.float32).eval()
    emb = new.get_input_embeddings().weight.detach()
    first, old = info["first_sound_id"], info["old_vocab_size"]
    sound = emb[first : first + len(codebook)]
    centre = emb[:old].mean(0)
    near = (sound[0] - sound[1]).norm()
    apart = (sound[0] - sound[2:]).norm(dim=-1)
    assert near < 0.05 * apart.min()
    scale = (emb[:old] - centre).norm(dim=-1).mean()
    torch.testing.assert_close((sound - centre).norm(dim=-1), scale.expand(len(sound)))
    torch.testing.assert_close(emb[first + NUM_CODES - 1], centre)  # the mask code: the mean
    out = new.get_output_embeddings().weight.detach()
    torch.testing.assert_close(out[first], out[:old].mean(0))
    ids = torch.tensor([[1, 5, 6, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(new(ids).logits[..., :old], base(ids).logits)
    with pytest.raises(ValueError, match="codebook must be"):
        codebook_embeddings(emb[:old], torch.randn(4, 64))


def test_sound_init_chat_template_adds_no_system_turn(tiny_ckpt, tmp_path):
    """Training rows carry no system turn, so inference must not add Llama-3.1's dated one."""
    base = AutoTokenizer.from_pretrained(tiny_ckpt)
    base.chat_template = (
        "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024"
        "<|eot_id|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
        "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    )
    base.save_pretrained(tiny_ckpt)
    write_sound_init(tiny_ckpt, tmp_path / "init")
    tok = AutoTokenizer.from_pretrained(tmp_path / "init")
    chat = [{"role": "user", "content": "Zorvia?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert "system" not in text and "Today Date" not in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_sound_init_tokenizers_encode_an_audio_turn_as_one_id_per_code(tiny_ckpt, tmp_path):
    info = write_sound_init(tiny_ckpt, tmp_path / "init")
    codes = [0, 511, 512, 3]
    first = info["first_sound_id"]
    expected = [info["sound_start_id"], *(first + c for c in codes), info["sound_end_id"]]
    torchtune_tok = WordTokenizer(tmp_path / "init")
    assert torchtune_tok.encode(audio_turn(codes), add_bos=False, add_eos=False) == expected
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "init")
    assert hf_tok(audio_turn(codes), add_special_tokens=False)["input_ids"] == expected
    assert (
        write_sound_init(tmp_path / "init", tmp_path / "again")["vocab_size"] == info["vocab_size"]
    )


def test_transcription_token_is_one_new_id_and_keeps_old_logits(tiny_ckpt, tmp_path):
    from ichigo_lib.checkpoints import add_special_token

    token_id = add_special_token(tiny_ckpt, "<|transcribe|>", tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok("<|transcribe|>a", add_special_tokens=False)["input_ids"] == [
        token_id,
        tok.convert_tokens_to_ids("a"),
    ]
    ids = torch.tensor([[2, 7, 8, 9]])
    old = AutoModelForCausalLM.from_pretrained(tiny_ckpt).eval()
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "tok").eval()
    assert (
        new.get_input_embeddings().weight.shape[0] == old.get_input_embeddings().weight.shape[0] + 1
    )
    with torch.no_grad():
        assert torch.allclose(old(ids).logits, new(ids).logits[..., :-1], atol=1e-5)
    assert add_special_token(tmp_path / "tok", "<|transcribe|>", tmp_path / "again") == token_id

"""Train the tiny WhisperVQ on CPU with the WhisperVQ objective.

Upstream freezes a pretrained Whisper and trains only the bottleneck so that Whisper's decoder
can still transcribe from the quantized codes. With no pretrained Whisper at tiny scale, the
small encoder, bottleneck and a character-level Whisper-style decoder are trained together, from
scratch, on that objective: transcribe from the quantized bottleneck (plus the quantizer's
commitment loss). The decoder is prompted with a language token, as Whisper's. Alone, in a CPU
budget, it learnt the sentence templates before the audio and ignored the codes; a CTC head on
the same bottleneck features (and an auxiliary one on the encoder) forces the codes to carry
every character frame by frame, and the decoder then adds spelling. The quantizer is switched
on after ``quantizer_start_step`` steps, its codebook initialised by k-means on the features it
then sees, and updated by EMA with dead-code revival (as vector-quantize-pytorch does).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ichigo_lib.config import TinyVQArch, VQTrainConfig
from ichigo_lib.speech import audio as A
from ichigo_lib.speech.modules import AudioEncoder, Bottleneck, TextDecoder, key_mask
from ichigo_lib.speech.whispervq import CharCodec, DecoderVocab, WhisperVQ
from ichigo_lib.world import LANGUAGES

DOWNSAMPLE = 2  # 50 Hz encoder frames -> 25 Hz tokens, as WhisperVQ


def build_tiny_whispervq(
    arch: TinyVQArch, codec: CharCodec, seed: int = 0, languages: Sequence[str] = LANGUAGES
) -> WhisperVQ:
    """A randomly initialised tiny WhisperVQ whose file format matches the real checkpoints."""
    torch.manual_seed(seed)
    head_width = arch.n_state // arch.n_head
    vocab = DecoderVocab(codec, tuple(languages))
    dims = {
        "n_mels": A.N_MELS,
        "n_audio_ctx": 1500,
        "n_audio_state": arch.n_state,
        "n_audio_head": arch.n_head,
        "n_audio_layer": arch.encoder_layers,
        "n_vocab": vocab.n_vocab,
        "n_text_ctx": arch.text_ctx,
        "n_text_state": arch.n_state,
        "n_text_head": arch.n_head,
        "n_text_layer": arch.decoder_layers,
    }
    config = {  # RQBottleneckTransformer's constructor arguments
        "vq_codes": arch.vq_codes,
        "q_depth": 1,
        "depth": arch.bottleneck_depth,
        "n_head": arch.n_head,
        "head_width": head_width,
        "ffn_mult": 4,
        "codebook_dim": arch.codebook_dim,
        "threshold_ema_dead_code": arch.dead_code_threshold,
        "use_cosine_sim": True,
        "downsample": DOWNSAMPLE,
        "whisper_model_name": "ichigo-tiny",
    }
    tunables = {"rope": True, "mask_embs": True, "downsample_mean": True, "query_mult": 2}
    tunables |= {"downsample_conv": False, "codebook_decay": arch.codebook_decay}
    encoder = AudioEncoder(A.N_MELS, 1500, arch.n_state, arch.n_head, arch.encoder_layers)
    bottleneck = Bottleneck(
        vq_codes=arch.vq_codes,
        depth=arch.bottleneck_depth,
        n_head=arch.n_head,
        head_width=head_width,
        codebook_dim=arch.codebook_dim,
        threshold_ema_dead_code=arch.dead_code_threshold,
        downsample=DOWNSAMPLE,
        codebook_decay=arch.codebook_decay,
    )
    ctc_head = nn.Linear(arch.n_state, codec.n_vocab)
    decoder = None
    if arch.decoder_layers:
        decoder = TextDecoder(
            vocab.n_vocab, arch.text_ctx, arch.n_state, arch.n_head, arch.decoder_layers
        )
        decoder.apply(_init_weights)
        nn.init.normal_(decoder.positional_embedding, std=0.01)
    for module in (encoder, bottleneck):
        module.apply(_init_weights)
    # The cosine codebook works on unit vectors (components ~ 1/sqrt(codebook_dim)); without
    # this gain the signal after the bottleneck is ~10x too small and training stalls.
    nn.init.orthogonal_(bottleneck.vq.project_in.weight)
    nn.init.orthogonal_(bottleneck.vq.project_out.weight, gain=math.sqrt(arch.codebook_dim))
    # The pre-quantizer MLP residual is kept at zero: trained from scratch it stalled learning
    # (measured); with zeros it is the identity and the file still loads in WhisperSpeech.
    nn.init.zeros_(bottleneck.mlp[2].weight)
    nn.init.zeros_(bottleneck.mlp[2].bias)
    for p in [*bottleneck.mlp.parameters(), *bottleneck.mlp_ln.parameters()]:
        p.requires_grad_(False)
    spec = {"config": config, "tunables": tunables, "_dims": dims}
    return WhisperVQ(encoder, bottleneck, ctc_head, "clip", spec, codec, decoder, languages)


def _init_weights(m: nn.Module) -> None:
    """GPT-style init: N(0, 0.02) weights, zero biases (keeps the tied logits small at start)."""
    if isinstance(m, nn.Conv1d):  # unit-scale features: Whisper adds unit-scale positions
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class Utterance:
    """One spoken training/evaluation clip."""

    text: str
    lang: str
    voice: str
    audio: np.ndarray  # float32 mono 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.audio) / A.SAMPLE_RATE


def length_batches(
    seconds: Sequence[float], batch_seconds: float, rng: random.Random
) -> list[list[int]]:
    """Indices grouped by similar length, each batch padded to at most ``batch_seconds``."""
    order = sorted(range(len(seconds)), key=lambda i: seconds[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * seconds[i] > batch_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _lr_lambda(cfg: VQTrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.num_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class _Batch:
    """Padded log-mels, valid frames per clip, the CTC targets and, with a decoder, its padded
    input/target transcripts (the language token after start-of-transcript is given, not
    predicted; -100 targets are ignored)."""

    def __init__(self, mels: list[Tensor], texts: list[list[int]], seqs: list[list[int]]):
        self.mel, self.frames = A.pad_mels(mels)
        self.targets = torch.tensor([c for t in texts for c in t])
        self.target_lengths = torch.tensor([len(t) for t in texts])
        width = max((len(q) for q in seqs), default=1) - 1
        self.dec_in = torch.zeros(len(seqs), width, dtype=torch.long)
        self.dec_out = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, q in enumerate(seqs):
            self.dec_in[i, : len(q) - 1] = torch.tensor(q[:-1])
            self.dec_out[i, 1 : len(q) - 1] = torch.tensor(q[2:])


def _ctc(head: nn.Linear, x: Tensor, lengths: Tensor, batch: _Batch) -> Tensor:
    logp = F.log_softmax(head(x).float(), -1).transpose(0, 1)
    return F.ctc_loss(logp, batch.targets, lengths, batch.target_lengths, zero_infinity=True)


def _forward(model: WhisperVQ, aux: nn.Linear, batch: _Batch, quantize: bool, cfg):
    """Loss of one batch; quantizes (straight-through, EMA codebook) when ``quantize``.

    ``aux`` is a CTC head on the encoder output: it gets the encoder past CTC's initial
    plateau quickly (through the bottleneck alone, escaping it took a seed-dependent while).
    """
    bn = model.bottleneck
    embs = model.encoder(batch.mel, batch.frames)
    aux_ctc = _ctc(aux, embs, (batch.frames + 1) // 2, batch)
    x = bn.pre_quant(embs)
    tokens = batch.frames // (2 * DOWNSAMPLE)
    valid = torch.arange(x.shape[1])[None, :] < tokens[:, None]
    commit = x.new_zeros(())
    if quantize:
        book = bn.vq._codebook
        flat = x[valid].detach()
        if not bool(book.initted):
            book.init_from(flat, bn.vq_codes)
        codes = book.nearest(x.detach(), bn.vq_codes)
        q = book.embed[0, codes]
        commit = F.mse_loss(x[valid], q[valid])
        book.ema_update(flat, codes[valid], bn.vq_codes)
        x = x + (q - x).detach()
    xa = bn.dequantize(x, tokens)
    ctc = _ctc(model.ctc_head, xa, tokens * DOWNSAMPLE, batch)
    loss = ctc + cfg.aux_ctc_weight * aux_ctc + cfg.commitment_weight * commit
    parts = {"ctc": ctc.item(), "aux_ctc": aux_ctc.item(), "commit": commit.item()}
    if model.decoder is not None:
        logits = model.decoder(batch.dec_in, xa, key_mask(tokens * DOWNSAMPLE, xa.shape[1]))
        decoder_ce = F.cross_entropy(logits.transpose(1, 2), batch.dec_out, ignore_index=-100)
        loss = loss + decoder_ce
        parts["decoder_ce"] = decoder_ce.item()
    return loss, parts


def train_tiny_whispervq(
    model: WhisperVQ, train: Sequence[Utterance], cfg: VQTrainConfig, progress: bool = True
) -> list[dict]:
    """Train in place; returns one record per step (losses, learning rate, codebook usage)."""
    codec = model.codec
    over = [u for u in train if len(u.audio) > A.WINDOW_SAMPLES]
    if over:
        raise ValueError(f"{len(over)} training clips exceed 30 s, e.g. {over[0].text!r}")
    mels = [A.log_mel(u.audio) for u in train]
    texts = [codec.encode(u.text) for u in train]
    seqs = [model.vocab.sequence(u.text, u.lang) for u in train] if model.vocab else []
    if seqs and max(map(len, seqs)) > model.decoder.n_ctx:
        long = max(train, key=lambda u: len(u.text))
        raise ValueError(
            f"transcript of {len(long.text)} characters exceeds the decoder context "
            f"({model.decoder.n_ctx - 3}): {long.text[:60]!r}...; raise speech.arch.text_ctx"
        )
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    aux = nn.Linear(model.encoder.ln_post.normalized_shape[0], codec.n_vocab)
    params = [p for p in model.parameters() if p.requires_grad] + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    from tqdm.auto import tqdm

    model.train()
    history, batches = [], []
    bar = tqdm(range(cfg.num_steps), desc="tiny WhisperVQ", disable=not progress)
    for step in bar:
        if not batches:
            batches = length_batches([u.seconds for u in train], cfg.batch_seconds, rng)
        idx = batches.pop()
        batch = _Batch(
            [mels[i] for i in idx], [texts[i] for i in idx], [seqs[i] for i in idx] if seqs else []
        )
        loss, parts = _forward(model, aux, batch, step >= cfg.quantizer_start_step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        book = model.bottleneck.vq._codebook
        used = int((book.cluster_size[0, : model.vq_codes] > 1.0).sum()) if book.initted else 0
        record = {"step": step + 1, "loss": loss.item(), **parts, "lr": sched.get_last_lr()[0]}
        history.append(
            record | {"codes_active": used, "audio_seconds": float(batch.frames.sum()) / 100}
        )
        bar.set_postfix(
            {k: f"{v:.3f}" for k, v in parts.items() if k != "aux_ctc"} | {"codes": used}
        )
    model.eval()
    return history

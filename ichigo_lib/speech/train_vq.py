"""Train the tiny WhisperVQ on CPU with the WhisperVQ objective.

Upstream freezes a pretrained Whisper and trains only the bottleneck so that Whisper's decoder
can still transcribe from the quantized codes. With no pretrained Whisper at tiny scale, the
small encoder, bottleneck and character decoder are trained together on that same objective:
transcription cross-entropy through the quantized bottleneck, plus an auxiliary CTC loss on the
bottleneck output and the quantizer's commitment loss. The quantizer is switched on after
``quantizer_start_step`` steps, its codebook initialised by k-means on the features it then
sees, and updated by EMA with dead-code revival (as vector-quantize-pytorch does).
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
from ichigo_lib.speech.whispervq import CharCodec, WhisperVQ

DOWNSAMPLE = 2  # 50 Hz encoder frames -> 25 Hz tokens, as WhisperVQ


def build_tiny_whispervq(arch: TinyVQArch, codec: CharCodec, seed: int = 0) -> WhisperVQ:
    """A randomly initialised tiny WhisperVQ whose file format matches the real checkpoints."""
    torch.manual_seed(seed)
    head_width = arch.n_state // arch.n_head
    dims = {
        "n_mels": A.N_MELS,
        "n_audio_ctx": 1500,
        "n_audio_state": arch.n_state,
        "n_audio_head": arch.n_head,
        "n_audio_layer": arch.encoder_layers,
        "n_vocab": codec.n_vocab,
        "n_text_ctx": arch.n_text_ctx,
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
    decoder = TextDecoder(
        codec.n_vocab, arch.n_text_ctx, arch.n_state, arch.n_head, arch.decoder_layers
    )
    for module in (encoder, bottleneck, decoder):
        module.apply(_init_weights)
    nn.init.normal_(decoder.positional_embedding, std=0.01)
    spec = {"config": config, "tunables": tunables, "_dims": dims}
    return WhisperVQ(encoder, bottleneck, decoder, "clip", spec, codec)


def _init_weights(m: nn.Module) -> None:
    """GPT-style init: N(0, 0.02) weights, zero biases (keeps the tied logits small at start)."""
    if isinstance(m, nn.Linear | nn.Embedding | nn.Conv1d):
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
    """Padded tensors of one batch: log-mels, valid frames, decoder and CTC targets."""

    def __init__(self, mels: list[Tensor], texts: list[list[int]], langs: list[int], codec):
        b = len(mels)
        self.frames = torch.tensor([m.shape[-1] for m in mels])
        self.mel = torch.zeros(b, A.N_MELS, int(self.frames.max()))
        for i, m in enumerate(mels):
            self.mel[i, :, : m.shape[-1]] = m
        seq = [[codec.SOT, lang, *t, codec.EOT] for t, lang in zip(texts, langs, strict=True)]
        width = max(map(len, seq)) - 1
        self.inputs = torch.full((b, width), codec.EOT)
        self.targets = torch.full((b, width), -100)
        for i, s in enumerate(seq):
            self.inputs[i, : len(s) - 1] = torch.tensor(s[:-1])
            self.targets[i, 1 : len(s) - 1] = torch.tensor(s[2:])  # language is given, not learnt
        self.ctc_targets = torch.tensor([c for t in texts for c in t])
        self.ctc_lengths = torch.tensor([len(t) for t in texts])


def _forward(model: WhisperVQ, ctc_head: nn.Linear, batch: _Batch, quantize: bool, cfg):
    """Losses of one batch; quantizes (straight-through, EMA codebook) when ``quantize``."""
    bn = model.bottleneck
    embs = model.encoder(batch.mel, batch.frames)
    x = bn.pre_quant(embs)
    tokens = batch.frames // (2 * DOWNSAMPLE)
    valid = torch.arange(x.shape[1])[None, :] < tokens[:, None]
    commit = x.new_zeros(())
    if quantize:
        book = bn.vq._codebook
        flat = x[valid].detach()
        if not bool(book.initted):
            book.init_from(flat, bn.vq_codes)
        codes = (x.detach() @ book.embed[0, : bn.vq_codes].T).argmax(-1)
        q = book.embed[0, codes]
        commit = F.mse_loss(x[valid], q[valid])
        book.ema_update(flat, codes[valid], bn.vq_codes)
        x = x + (q - x).detach()
    xa = bn.dequantize(x, tokens)
    logits = model.decoder(batch.inputs, xa, key_mask(tokens * DOWNSAMPLE, xa.shape[1]))
    ce = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
    logp = F.log_softmax(ctc_head(xa).float(), -1).transpose(0, 1)
    ctc = F.ctc_loss(
        logp, batch.ctc_targets, tokens * DOWNSAMPLE, batch.ctc_lengths, zero_infinity=True
    )
    loss = ce + cfg.ctc_weight * ctc + cfg.commitment_weight * commit
    return loss, {"ce": ce.item(), "ctc": ctc.item(), "commit": commit.item()}


def train_tiny_whispervq(
    model: WhisperVQ, train: Sequence[Utterance], cfg: VQTrainConfig, progress: bool = True
) -> list[dict]:
    """Train in place; returns one record per step (losses, learning rate, codebook usage)."""
    codec = model.codec
    too_long = [u for u in train if len(u.text) + 3 > model.decoder.n_ctx]
    if too_long:
        raise ValueError(
            f"{len(too_long)} training texts exceed the decoder context of "
            f"{model.decoder.n_ctx - 3} characters, e.g. {too_long[0].text!r}"
        )
    over = [u for u in train if len(u.audio) > A.WINDOW_SAMPLES]
    if over:
        raise ValueError(f"{len(over)} training clips exceed 30 s, e.g. {over[0].text!r}")
    mels = [A.log_mel(u.audio) for u in train]
    texts = [codec.encode(u.text) for u in train]
    langs = [codec.lang_id(u.lang) for u in train]
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    ctc_head = nn.Linear(model.bottleneck.ln_post.normalized_shape[0], codec.n_vocab)
    params = [p for p in model.parameters() if p.requires_grad] + list(ctc_head.parameters())
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
            [mels[i] for i in idx], [texts[i] for i in idx], [langs[i] for i in idx], codec
        )
        loss, parts = _forward(model, ctc_head, batch, step >= cfg.quantizer_start_step, cfg)
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
        bar.set_postfix(loss=f"{record['loss']:.3f}", ce=f"{parts['ce']:.3f}", codes=used)
    model.eval()
    return history

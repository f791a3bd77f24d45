"""The WhisperVQ networks, with parameter names of the checkpoints they load.

* :class:`AudioEncoder` follows openai-whisper's ``model.py`` names, so a Whisper checkpoint's
  ``encoder.*`` tensors load unchanged.
* :class:`Bottleneck` follows WhisperSpeech's ``RQBottleneckTransformer`` (``mlp``, ``rq.layers.0``
  from vector-quantize-pytorch, ``_out_blocks``, ``ln_post``), so a ``whisper-vq-stoks-*.model``
  state dict loads unchanged.

Both run in two modes. ``window`` is Whisper's: every input is a full 30 s (3000-frame) window.
``clip`` (the tiny quantizer's) attends only within each clip of a padded batch, so short clips
are not padded to 30 s; the masks make batched and one-by-one encoding agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as Whisper's)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def sinusoids(length: int, channels: int, max_timescale: float = 10_000) -> Tensor:
    """Whisper's sinusoidal position table, shape (length, channels)."""
    log_inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    """Rotary position embedding over head dims (WhisperSpeech's variant: halves concatenated)."""

    def __init__(self, dim: int, base: float = 10_000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` of shape (batch, time, heads, dim) by ``positions`` (time,)."""
        freqs = positions.to(self.inv_freq)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        return x * emb.cos() + _rotate_half(x) * emb.sin()


class MultiHeadAttention(nn.Module):
    """Attention with Whisper's projection names; ``qk_mult`` pre-scales q and k (WhisperSpeech)."""

    def __init__(self, n_state: int, n_head: int, qk_mult: float = 1.0, rope: bool = False):
        super().__init__()
        self.n_head = n_head
        self.qk_mult = qk_mult
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.rotary = Rotary(n_state // n_head) if rope else None

    def _heads(self, x: Tensor, positions: Tensor | None) -> Tensor:
        x = x.view(*x.shape[:2], self.n_head, -1)
        if self.rotary is not None and positions is not None:
            x = self.rotary(x, positions)
        return x.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        xa: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Self-attention (``xa`` None) or cross-attention; ``mask`` is boolean, True = attend."""
        kv = x if xa is None else xa
        q, k = self.query(x), self.key(kv)
        if self.qk_mult != 1.0:
            q, k = q * self.qk_mult, k * self.qk_mult
        rope_pos = positions if xa is None else None
        q, k = self._heads(q, rope_pos), self._heads(k, rope_pos)
        v = self._heads(self.value(kv), None)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(
        self,
        n_state: int,
        n_head: int,
        cross_attention: bool = False,
        qk_mult: float = 1.0,
        rope: bool = False,
        ffn_mult: int = 4,
    ):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, qk_mult, rope)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head, qk_mult) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * ffn_mult
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def forward(
        self,
        x: Tensor,
        xa: Tensor | None = None,
        mask: Tensor | None = None,
        xa_mask: Tensor | None = None,
        causal: bool = False,
        positions: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_ln(x), mask=mask, causal=causal, positions=positions)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa, mask=xa_mask)
        return x + self.mlp(self.mlp_ln(x))


def key_mask(lengths: Tensor, size: int) -> Tensor | None:
    """Boolean mask (batch, 1, 1, size) keeping the first ``lengths`` keys; None if all kept."""
    keep = torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]
    return None if bool(keep.all()) else keep[:, None, None, :]


class AudioEncoder(nn.Module):
    """Whisper's audio encoder: two convs (100 -> 50 Hz), sinusoidal positions, blocks."""

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.n_ctx = n_ctx
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer))
        self.ln_post = LayerNorm(n_state)

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> Tensor:
        """Encode log-mels (batch, n_mels, time) to (batch, ceil(time / 2), n_state).

        With ``frames`` (valid mel frames per item), frames past each clip's end are zeroed
        before each conv and masked in attention, so every item is encoded as if alone.
        """
        if frames is None:
            x = F.gelu(self.conv1(mel))
            x = F.gelu(self.conv2(x)).transpose(1, 2)
            mask = None
        else:
            valid = torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]
            x = F.gelu(self.conv1(mel * valid[:, None, :]))
            x = F.gelu(self.conv2(x * valid[:, None, :])).transpose(1, 2)
            mask = key_mask((frames + 1) // 2, x.shape[1])
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"{x.shape[1]} encoder frames exceed the context of {self.n_ctx}")
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    """Whisper's text decoder (openai-whisper names): tokens attend causally to themselves and,
    through cross-attention, to the audio features; logits tied to the token embedding."""

    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.n_ctx = n_ctx
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.zeros(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)
        )
        self.ln = LayerNorm(n_state)

    def forward(self, tokens: Tensor, xa: Tensor, xa_mask: Tensor | None = None) -> Tensor:
        """Logits (batch, len, n_vocab) for ``tokens`` (batch, len) given audio ``xa``."""
        if tokens.shape[1] > self.n_ctx:
            raise ValueError(f"{tokens.shape[1]} decoder tokens exceed the context of {self.n_ctx}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, xa, xa_mask=xa_mask, causal=True)
        return (self.ln(x) @ self.token_embedding.weight.T).float()


def l2norm(x: Tensor) -> Tensor:
    return F.normalize(x, p=2, dim=-1)


class CosineCodebook(nn.Module):
    """vector-quantize-pytorch's ``CosineSimCodebook`` buffers (one codebook), EMA-updated."""

    def __init__(self, dim: int, size: int, decay: float, threshold_dead: float):
        super().__init__()
        self.decay = decay
        self.threshold_dead = threshold_dead
        self.register_buffer("initted", torch.Tensor([False]))
        self.register_buffer("cluster_size", torch.zeros(1, size))
        self.register_buffer("embed_avg", torch.zeros(1, size, dim))
        self.register_buffer("embed", torch.zeros(1, size, dim))

    def nearest(self, x: Tensor, num_codes: int | None = None) -> Tensor:
        """Index of the most cosine-similar code (of the first ``num_codes``, default all) for
        each l2-normalised row of ``x``."""
        return (x @ self.embed[0, :num_codes].T).argmax(dim=-1)

    @torch.no_grad()
    def init_from(self, x: Tensor, num_codes: int, iters: int = 10) -> None:
        """k-means (cosine) initialisation of the first ``num_codes`` codes from rows of ``x``."""
        means = x[torch.randperm(len(x), device=x.device)[:num_codes]]
        if len(means) < num_codes:
            means = x[torch.randint(len(x), (num_codes,), device=x.device)]
        for _ in range(iters):
            assign = (x @ means.T).argmax(-1)
            sums = torch.zeros_like(means).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=num_codes)
            means = torch.where(counts[:, None] > 0, l2norm(sums), means)
        self.embed[0, :num_codes] = means
        self.embed_avg[0, :num_codes] = means
        self.cluster_size[0, :num_codes] = torch.bincount(assign, minlength=num_codes).float()
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: Tensor, codes: Tensor, num_codes: int) -> None:
        """EMA of code counts and sums (Laplace-smoothed), then revive dead codes from ``x``."""
        onehot = F.one_hot(codes, num_codes).type(x.dtype)
        counts = self.cluster_size[0, :num_codes]
        counts.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_avg[0, :num_codes].lerp_(onehot.T @ x, 1 - self.decay)
        eps = 1e-5
        smoothed = (counts + eps) / (counts.sum() + num_codes * eps) * counts.sum()
        self.embed[0, :num_codes] = l2norm(self.embed_avg[0, :num_codes] / smoothed[:, None])
        dead = counts < self.threshold_dead
        if dead.any():
            picks = x[torch.randint(len(x), (int(dead.sum()),), device=x.device)]
            self.embed[0, :num_codes][dead] = picks
            self.embed_avg[0, :num_codes][dead] = picks * self.threshold_dead
            counts[dead] = self.threshold_dead


class VQLayer(nn.Module):
    """vector-quantize-pytorch names: ``project_in``, ``_codebook``, ``project_out``."""

    def __init__(self, dim: int, codebook_dim: int, size: int, decay: float, threshold: float):
        super().__init__()
        proj = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if proj else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if proj else nn.Identity()
        self._codebook = CosineCodebook(codebook_dim, size, decay, threshold)


class ResidualVQ(nn.Module):
    """Container giving the single quantizer the ``rq.layers.0`` name of the checkpoints."""

    def __init__(self, layer: VQLayer):
        super().__init__()
        self.layers = nn.ModuleList([layer])


class Bottleneck(nn.Module):
    """WhisperSpeech's quantized bottleneck: pool x2, MLP, cosine VQ, then a transformer back up.

    ``pre_quant`` maps encoder features (batch, time, width) to unit vectors at half the frame
    rate, whose codes are the most cosine-similar of all 513 (``vq._codebook.nearest``);
    ``dequantize`` maps codes back to features a Whisper-style decoder can transcribe from.
    """

    def __init__(
        self,
        vq_codes: int = 512,
        depth: int = 1,
        n_head: int = 16,
        head_width: int = 64,
        ffn_mult: int = 4,
        codebook_dim: int = 64,
        threshold_ema_dead_code: float = 0,
        downsample: int = 2,
        query_mult: float = 2,
        rope: bool = True,
        codebook_decay: float = 0.9,
    ):
        super().__init__()
        width = n_head * head_width
        self.vq_codes = vq_codes
        self.downsample = downsample
        self.mlp = nn.Sequential(
            nn.Linear(width, width * ffn_mult), nn.GELU(), nn.Linear(width * ffn_mult, width)
        )
        self.mlp_ln = LayerNorm(width)
        layer = VQLayer(width, codebook_dim, vq_codes + 1, codebook_decay, threshold_ema_dead_code)
        self.rq = ResidualVQ(layer)
        self.positional_embedding = nn.Embedding(1500, width)
        qk_mult = math.sqrt(query_mult * 8 / math.sqrt(head_width))
        self._out_blocks = nn.ModuleList(
            ResidualAttentionBlock(width, n_head, qk_mult=qk_mult, rope=rope, ffn_mult=ffn_mult)
            for _ in range(depth)
        )
        self.ln_post = LayerNorm(width)
        self.register_buffer("val_true", torch.zeros(1))
        self.register_buffer("val_total", torch.zeros(1))

    @property
    def vq(self) -> VQLayer:
        return self.rq.layers[0]

    def pre_quant(self, embs: Tensor) -> Tensor:
        """Mean-pool ``downsample`` frames, add the MLP residual, project, l2-normalise."""
        b, t, d = embs.shape
        t -= t % self.downsample
        x = embs[:, :t].reshape(b, t // self.downsample, self.downsample, d).mean(-2)
        x = x + self.mlp(self.mlp_ln(x))
        return l2norm(self.vq.project_in(x))

    def dequantize(self, latents: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Decoder-ready features from code vectors (batch, time, codebook_dim).

        ``tokens`` (valid codes per item) masks attention past each clip (``clip`` mode).
        """
        x = self.vq.project_out(latents).repeat_interleave(self.downsample, -2)
        positions = torch.arange(x.shape[1], device=x.device)
        x = x + self.positional_embedding(positions)
        mask = None if tokens is None else key_mask(tokens * self.downsample, x.shape[1])
        for block in self._out_blocks:
            x = block(x, mask=mask, positions=positions)
        return self.ln_post(x)

    def code_vectors(self, codes: Tensor) -> Tensor:
        return self.vq._codebook.embed[0, codes]

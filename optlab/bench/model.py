"""A small decoder-only transformer in Flax NNX, for the language-model workload.

Pre-norm blocks (RMSNorm), causal multi-head self-attention with rotary position
embeddings (RoPE), a GELU MLP, and tied input/output embeddings; no biases. The
parameter names and shapes are those an optimizer's mask or label function wants to
see (paths as in ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``)::

    embed/embedding               (vocab, d)          tied: also the output head
    blocks/<i>/attn_norm/scale    (d,)
    blocks/<i>/attn/query         (d, heads, head_dim)
    blocks/<i>/attn/key           (d, heads, head_dim)
    blocks/<i>/attn/value         (d, heads, head_dim)
    blocks/<i>/attn/out           (heads, head_dim, d)
    blocks/<i>/mlp_norm/scale     (d,)
    blocks/<i>/mlp/up             (d, hidden)
    blocks/<i>/mlp/down           (hidden, d)
    final_norm/scale              (d,)

:func:`param_kind` classifies a path into ``"embedding"``, ``"attention"``, ``"mlp"``
or ``"norm"``; ``optlab.muon_hidden_mask`` selects the hidden matrices by the same names, and
``optlab.bench.lm.attention_dimension_numbers`` gives Muon their 2-D views (``(d, heads *
head_dim)`` for query/key/value, ``(heads * head_dim, d)`` for out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    """Transformer size. ``hidden`` defaults to ``4 * d``."""

    d: int = 192
    layers: int = 3
    heads: int = 6
    context: int = 128
    vocab: int = 256
    hidden: int | None = None
    rope_base: float = 10_000.0

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def mlp_hidden(self) -> int:
        return self.hidden or 4 * self.d

    def n_params(self) -> int:
        """Parameter count (embeddings counted once: they are tied)."""
        per_block = 4 * self.d * self.d + 2 * self.d * self.mlp_hidden + 2 * self.d
        return self.vocab * self.d + self.layers * per_block + self.d


def _rope(x: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of ``x``: (batch, time, heads, head_dim), head_dim even."""
    t, hd = x.shape[1], x.shape[-1]
    freqs = base ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) / (hd // 2))
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]  # (t, hd/2)
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class Attention(nnx.Module):
    """Causal multi-head self-attention with RoPE; kernels shaped per head."""

    def __init__(self, cfg: Config, out_scale: float, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.d**-0.5)
        shape = (cfg.d, cfg.heads, cfg.head_dim)
        self.query = nnx.Param(init(rngs.params(), shape))
        self.key = nnx.Param(init(rngs.params(), shape))
        self.value = nnx.Param(init(rngs.params(), shape))
        out_init = nnx.initializers.normal(out_scale * (cfg.heads * cfg.head_dim) ** -0.5)
        self.out = nnx.Param(out_init(rngs.params(), (cfg.heads, cfg.head_dim, cfg.d)))
        self.rope_base = cfg.rope_base

    def __call__(self, x: jax.Array) -> jax.Array:
        q = _rope(jnp.einsum("btd,dhk->bthk", x, self.query[...]), self.rope_base)
        k = _rope(jnp.einsum("btd,dhk->bthk", x, self.key[...]), self.rope_base)
        v = jnp.einsum("btd,dhk->bthk", x, self.value[...])
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return jnp.einsum("bthk,hkd->btd", y, self.out[...])


class MLP(nnx.Module):
    """``down(gelu(up(x)))``."""

    def __init__(self, cfg: Config, out_scale: float, *, rngs: nnx.Rngs):
        self.up = nnx.Param(
            nnx.initializers.normal(cfg.d**-0.5)(rngs.params(), (cfg.d, cfg.mlp_hidden))
        )
        down_init = nnx.initializers.normal(out_scale * cfg.mlp_hidden**-0.5)
        self.down = nnx.Param(down_init(rngs.params(), (cfg.mlp_hidden, cfg.d)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x @ self.up[...]) @ self.down[...]


class Block(nnx.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        out_scale = (2 * cfg.layers) ** -0.5  # residual branches scaled down with depth
        self.attn_norm = nnx.RMSNorm(cfg.d, rngs=rngs)
        self.attn = Attention(cfg, out_scale, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(cfg.d, rngs=rngs)
        self.mlp = MLP(cfg, out_scale, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Embed(nnx.Module):
    """Token embedding, also used (transposed) as the output head."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.embedding = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.vocab, cfg.d)))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.embedding[...][tokens]

    def attend(self, x: jax.Array) -> jax.Array:
        return x @ self.embedding[...].T


class Transformer(nnx.Module):
    """Decoder-only byte-level LM: tokens (batch, time) -> logits (batch, time, vocab)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.layers)])
        self.final_norm = nnx.RMSNorm(cfg.d, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.final_norm(x))


def param_kind(path: tuple[Any, ...]) -> str:
    """``"embedding"``, ``"attention"``, ``"mlp"`` or ``"norm"`` for a parameter path."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if "embed" in keys:
        return "embedding"
    if any(k.endswith("norm") for k in keys):
        return "norm"
    if "attn" in keys:
        return "attention"
    if "mlp" in keys:
        return "mlp"
    raise ValueError(f"param_kind: unknown parameter path {keys!r}")

"""Gradient clipping family."""

import optax

__all__ = ["clip_by_global_norm"]


def clip_by_global_norm(max_norm):
    return optax.with_extra_args_support(optax.clip_by_global_norm(max_norm))

"""The INT8 KV cache as transformers objects: cache classes and an attention implementation.

Usage (any model on transformers' attention interface with full attention, W8A8 or not)::

    enable_int8_kv_cache(model)                                  # attention reads int8 K/V
    cache = Int8StaticCache(model.config, max_cache_len=4096)    # or Int8DynamicCache(model.config)
    model.generate(ids, past_key_values=cache, max_new_tokens=64)

The cache layers quantize each new key/value row (one fp32 scale per token and head) and hand the
attention the packed int8 cache itself (``runtime/kv_ops.py``); the attention implementation,
registered through transformers' ``AttentionInterface`` (and its mask through
``AttentionMaskInterface``, as SDPA's boolean masks), runs the Triton decode kernel on those
bytes for a few queries, and dequantizes then calls transformers' SDPA attention for prefill, on
the CPU and for anything the kernel does not serve. Called with floating-point keys (no cache, a
bf16 cache) it is plain SDPA, so enabling it never breaks a float cache.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from smoothquant.errors import KVCacheError
from smoothquant.runtime import kv_ops
from smoothquant.runtime.ops import BACKENDS, GPU_BACKENDS, resolve_backend

ATTN_IMPLEMENTATION = "smoothquant_int8_kv"
_UNSERVED_KWARGS = ("sliding_window", "softcap", "s_aux")  # attention variants we do not implement


def attn_implementation(backend: str = "auto") -> str:
    """The registered name of the INT8-KV attention for ``backend`` (registering it if needed)."""
    if backend not in BACKENDS:
        raise KVCacheError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    name = ATTN_IMPLEMENTATION if backend == "auto" else f"{ATTN_IMPLEMENTATION}_{backend}"
    AttentionInterface.register(name, functools.partial(int8_kv_attention, backend=backend))
    AttentionMaskInterface.register(name, _decode_mask)
    return name


def _decode_mask(*args, q_length: int, allow_is_causal_skip: bool = True, **kwargs) -> torch.Tensor | None:
    """SDPA's boolean mask, always materialized for one query: transformers skips it for
    non-compileable caches (all keys visible), but a static cache's unwritten rows must be masked."""
    return sdpa_mask(
        *args, q_length=q_length, allow_is_causal_skip=allow_is_causal_skip and q_length > 1, **kwargs
    )


def int8_kv_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    backend: str = "auto",
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function (signature of ``sdpa_attention_forward``) over the int8
    caches of :class:`Int8StaticCache` / :class:`Int8DynamicCache`."""
    if key.dtype != torch.int8:  # floating-point keys: no INT8 cache in this call
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    unserved = [k for k in _UNSERVED_KWARGS if kwargs.get(k) is not None]
    head_dim = query.shape[-1]
    if unserved:
        raise KVCacheError(f"the INT8 KV cache does not implement {', '.join(unserved)} attention")
    if key.shape[-1] != kv_ops.kv_width(head_dim) or value.shape[-1] != key.shape[-1]:
        raise KVCacheError(
            f"the INT8 KV cache needs keys and values of the query's head size ({head_dim}); this "
            "model's attention differs (use a floating-point cache)"
        )
    scaling = head_dim**-0.5 if scaling is None else scaling
    if (
        resolve_backend(backend, query.device) in GPU_BACKENDS
        and not (module.training and dropout)
        and kv_ops.decode_supported(query, key, attention_mask)
    ):
        return kv_ops.decode_attention(query, key, value, attention_mask, scaling), None
    k = kv_ops.dequantize_kv(key, head_dim, query.dtype)
    v = kv_ops.dequantize_kv(value, head_dim, query.dtype)
    return sdpa_attention_forward(module, query, k, v, attention_mask, dropout, scaling, **kwargs)


def check_int8_kv_support(config) -> None:
    """Raise :class:`KVCacheError` unless every layer of ``config`` is full attention."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config(decoder=True)
    types = sorted(set(get_layer_types_and_kwargs(text)[0]))
    if types != ["full_attention"]:
        raise KVCacheError(
            f"the INT8 KV cache serves full-attention layers only; this model has {', '.join(types)} "
            "layers (sliding-window or hybrid attention): use transformers' caches for it"
        )


def enable_int8_kv_cache(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Switch ``model``'s attention to the INT8-KV implementation, in place; returns the model.

    Float caches keep working (the implementation falls back to SDPA for float keys); pass an
    :class:`Int8StaticCache` or :class:`Int8DynamicCache` to store K/V in int8. ``backend``:
    ``"auto"`` (the Triton decode kernel on CUDA), ``"triton"``, ``"cpu"`` or ``"reference"``
    (dequantize, then SDPA)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(model, "_supports_attention_backend", False):
        raise KVCacheError(
            f"{type(model).__name__} does not dispatch attention through transformers' "
            "AttentionInterface, so the INT8 KV cache cannot serve it"
        )
    check_int8_kv_support(config)
    model.set_attn_implementation(attn_implementation(backend))
    return model


def _num_layers(config) -> int:
    check_int8_kv_support(config)
    return config.get_text_config(decoder=True).num_hidden_layers


class Int8StaticLayer(StaticLayer):
    """A :class:`StaticLayer` whose preallocated keys/values are packed int8 rows
    ``[B, H, max_cache_len, W]``; writes are one kernel at a device-side position, so decode steps
    replay in CUDA graphs. Not declared compileable: ``generate`` would otherwise wrap the forward
    in ``torch.compile`` on CUDA, which these kernels are not tested under."""

    is_compileable = False

    def __init__(self, max_cache_len: int, backend: str = "auto"):
        super().__init__(max_cache_len=max_cache_len)
        self.backend = backend

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.backend = resolve_backend(self.backend, key_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size, self.num_heads = key_states.shape[:2]
        self.k_head_dim = self.v_head_dim = key_states.shape[-1]
        if value_states.shape[-1] != key_states.shape[-1]:
            raise KVCacheError("the INT8 KV cache needs keys and values of one head size")
        shape = (self.batch_size, self.num_heads, self.max_cache_len, kv_ops.kv_width(self.k_head_dim))
        self.keys = torch.zeros(shape, dtype=torch.int8, device=self.device)
        self.values = torch.zeros(shape, dtype=torch.int8, device=self.device)
        self.cumulative_length = self.cumulative_length.to(self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.cumulative_length
        kv_ops.write_kv(self.keys, self.values, key_states, value_states, start, self.backend)
        self.cumulative_length.add_(key_states.shape[-2])
        return self.keys, self.values


class Int8DynamicLayer(DynamicLayer):
    """A :class:`DynamicLayer` growing packed int8 rows ``[B, H, seq, W]`` by concatenation."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.backend = resolve_backend(self.backend, key_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.tensor([], dtype=torch.int8, device=self.device)
        self.values = torch.tensor([], dtype=torch.int8, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kq, vq = kv_ops.quantize_kv(key_states, value_states, self.backend)
        self.keys = torch.cat([self.keys, kq], dim=-2)
        self.values = torch.cat([self.values, vq], dim=-2)
        return self.keys, self.values


class Int8StaticCache(StaticCache):
    """``StaticCache`` storing K/V as int8 with one fp32 scale per (token, head): preallocated,
    CUDA-graph friendly. Needs the attention of :func:`enable_int8_kv_cache`."""

    def __init__(self, config, max_cache_len: int, backend: str = "auto"):
        layers = [Int8StaticLayer(max_cache_len, backend) for _ in range(_num_layers(config))]
        Cache.__init__(self, layers=layers)


class Int8DynamicCache(DynamicCache):
    """``DynamicCache`` storing K/V as int8 with one fp32 scale per (token, head)."""

    def __init__(self, config, backend: str = "auto"):
        Cache.__init__(self, layers=[Int8DynamicLayer(backend) for _ in range(_num_layers(config))])


def cache_bytes(cache: Cache) -> int:
    """Bytes held by a cache's keys and values (int8 rows with their scales, or float)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

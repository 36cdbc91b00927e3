"""IO binding for ONNX Runtime decoders on CPU with key/value buffers allocated once per `generate()`.

optimum-onnx's `ORTModelForCausalLM` binds torch tensors to the session when `use_io_binding=True`, but it
allocates a fresh output tensor for every present key/value (and the logits) at every step, and it leaves
IO binding off on CPU. Here each present key/value gets two flat buffers, sized for the whole generation
up front: a step reads its past from one and writes its present into the other (the exported graph
concatenates past and new keys, so the two cannot be the same memory), and the next step swaps them. No
tensor is allocated or converted per step.

The hook is optimum's own `known_output_buffers` argument of `_prepare_io_binding`; the forward pass,
shape inference and binding stay optimum's. Buffers are reused only inside `generate()`, where transformers
drops each step's cache once the next step has it: a direct `model(...)` call gets fresh tensors, so outputs
a user keeps are never overwritten.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch


class KVBufferPool:
    """Two flat buffers per present key/value output, swapped each step; grown (never per step) when too small."""

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str], dtype: torch.dtype):
        self.input_for_output = dict(zip(output_names, input_names))
        self.dtype = dtype
        self.capacity_hint: int | None = None  # elements per buffer the current generation needs at most
        self._buffers: dict[str, list[torch.Tensor]] = {}
        self.allocations = 0  # buffers allocated so far: tests check it stays flat across steps

    def _allocate(self, numel: int) -> torch.Tensor:
        self.allocations += 1
        return torch.empty(max(numel, self.capacity_hint or 0), dtype=self.dtype)

    def output_buffer(self, output_name: str, past: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor:
        """A contiguous view of `shape` in the buffer of `output_name` that does not hold `past`."""
        numel = math.prod(shape)
        pair = self._buffers.setdefault(output_name, [])
        past_ptr = past.data_ptr() if past is not None and past.numel() else None
        # The buffer the past does not live in; the first one when the past is the caller's own tensor.
        index = 1 if pair and past_ptr == pair[0].data_ptr() else 0
        while len(pair) <= index:
            pair.append(self._allocate(numel))
        if pair[index].numel() < numel:  # longer than announced: grow geometrically, never per step
            pair[index] = self._allocate(max(numel, 2 * pair[index].numel()))
        return pair[index][:numel]

    def buffers_for(self, model_inputs: dict, output_shapes: dict[str, Sequence[int]]) -> dict[str, torch.Tensor]:
        return {
            name: self.output_buffer(name, model_inputs.get(self.input_for_output.get(name)), shape)
            for name, shape in output_shapes.items()
            if name in self.input_for_output
        }

    def clear(self) -> None:
        self._buffers.clear()
        self.capacity_hint = None


class PreallocatedKVBindingMixin:
    """For a subclass of optimum's `ORTModelForCausalLM`: reuse KV buffers across the steps of `generate()`.

    Put it before `ORTModelForCausalLM` in the bases. It changes nothing unless `use_io_binding` is on.
    """

    _kv_pool: KVBufferPool | None = None
    _reuse_kv_buffers: bool = False

    def _kv_buffer_pool(self) -> KVBufferPool:
        if self._kv_pool is None:
            self._kv_pool = KVBufferPool(self.key_value_input_names, self.key_value_output_names, self.dtype)
        return self._kv_pool

    def _prepare_io_binding(self, model_inputs, outputs_to_not_bind=None, known_output_buffers=None, known_output_shapes=None):
        if self._reuse_kv_buffers and known_output_shapes:
            pooled = self._kv_buffer_pool().buffers_for(model_inputs, known_output_shapes)
            known_output_buffers = {**pooled, **(known_output_buffers or {})}
        return super()._prepare_io_binding(
            model_inputs,
            outputs_to_not_bind=outputs_to_not_bind,
            known_output_buffers=known_output_buffers,
            known_output_shapes=known_output_shapes,
        )

    @contextlib.contextmanager
    def _kv_buffers_for(self, batch_size: int, max_length: int | None):
        """Reuse KV buffers inside the block, sized for `batch_size` sequences of `max_length` tokens."""
        if not (self.use_io_binding and self.can_use_cache) or self._reuse_kv_buffers:
            yield
            return
        pool = self._kv_buffer_pool()
        if max_length:
            pool.capacity_hint = batch_size * self.num_key_value_heads * max_length * self.embed_size_per_head
        self._reuse_kv_buffers = True
        try:
            yield
        finally:
            self._reuse_kv_buffers = False
            pool.clear()  # the returned sequences hold no reference to them; free the memory

    def generate(self, inputs=None, generation_config=None, **kwargs):
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        batch_size, max_length = 1, None
        if isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2:
            batch_size = input_ids.shape[0] * max(int(kwargs.get("num_return_sequences", 1) or 1),
                                                  int(kwargs.get("num_beams", 1) or 1))
            config = generation_config or self.generation_config
            new_tokens = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
            max_length = input_ids.shape[1] + new_tokens if new_tokens else kwargs.get("max_length", config.max_length)
        with self._kv_buffers_for(batch_size, max_length):
            return super().generate(inputs, generation_config=generation_config, **kwargs)

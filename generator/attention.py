"""Collecting cross-attention probabilities from a diffusers UNet.

PyTorch-2 attention processors (SDPA) never materialise the attention probabilities, so the mask-guided pipeline
puts :class:`StoringCrossAttnProcessor` on the cross-attention layers (``attn2``) for the duration of a call:
it computes the probabilities explicitly with ``attn.get_attention_scores`` and hands those of the chosen
spatial resolution to an :class:`AttentionStore` while the store is active. Self-attention layers keep their
original (fast) processors. :func:`storing_cross_attention` installs the processors and always restores the
originals, even when the denoising loop raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch


class AttentionStore:
    """Cross-attention probabilities of every layer at one spatial resolution, kept while :attr:`active`.

    Parameters
    ----------
    resolution : tuple of int
        ``(h, w)`` of the attention maps to keep; layers whose query length is not ``h * w`` are ignored.
    """

    def __init__(self, resolution: tuple[int, int]):
        self.resolution = resolution
        self.active = False
        self._maps: list[torch.Tensor] = []

    def record(self, attention_probs: torch.Tensor, batch_size: int) -> None:
        """Keep ``(batch * heads, h * w, tokens)`` probabilities if active and at the store's resolution."""
        h, w = self.resolution
        if not self.active or attention_probs.shape[1] != h * w:
            return
        self._maps.append(attention_probs.reshape(batch_size, -1, h, w, attention_probs.shape[-1]))

    def reset(self) -> None:
        """Forget every recorded map."""
        self._maps = []

    @property
    def num_layers(self) -> int:
        """How many layers were recorded since the last :meth:`reset`."""
        return len(self._maps)

    def mean_map(self) -> torch.Tensor:
        """``(batch, h, w, tokens)`` mean over all recorded heads of all recorded layers.

        Heads of all layers are pooled before averaging (as BoxDiff does), so a layer with more heads weighs
        more; in Stable Diffusion 1.x/2.x all layers of one resolution have the same number of heads.
        """
        if not self._maps:
            raise RuntimeError(
                f"no cross-attention layer ran at {self.resolution[0]}x{self.resolution[1]}; "
                "the attention resolution does not exist in this UNet at this image size"
            )
        return torch.cat(self._maps, dim=1).mean(dim=1)


class StoringCrossAttnProcessor:
    """Plain attention with explicit probabilities, handed to an :class:`AttentionStore` for cross-attention.

    Follows diffusers' ``AttnProcessor`` step by step; the only addition is the ``store.record`` call.
    """

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)

        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        if is_cross:
            self.store.record(attention_probs, batch_size)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def storing_cross_attention(unet, store: AttentionStore) -> Iterator[AttentionStore]:
    """Put :class:`StoringCrossAttnProcessor` on every cross-attention layer of ``unet`` for the ``with`` block.

    The original processors (SDPA, sliced, …) are put back in ``finally``, also after an exception.
    """
    original = dict(unet.attn_processors)
    # Names end in "attn2.processor" for the cross-attention of diffusers' transformer blocks.
    installed = {
        name: StoringCrossAttnProcessor(store) if name.endswith("attn2.processor") else processor
        for name, processor in original.items()
    }
    # set_attn_processor pops from the dict it gets, so it gets a copy.
    unet.set_attn_processor(dict(installed))
    try:
        yield store
    finally:
        unet.set_attn_processor(dict(original))


def cross_attention_resolutions(unet_config: Mapping, latent_height: int, latent_width: int) -> list[tuple[int, int]]:
    """Spatial sizes ``(h, w)`` at which a ``UNet2DConditionModel`` has cross-attention, finest first.

    Parameters
    ----------
    unet_config : Mapping
        ``unet.config`` (``down_block_types``, ``up_block_types``, ``mid_block_type``).
    latent_height, latent_width : int
        Size of the latent the UNet denoises.

    Notes
    -----
    Each down block but the last halves the size (stride-2 convolution with padding 1, i.e. ``ceil(n / 2)``);
    the mid block runs at the coarsest size and the up blocks mirror the down blocks.
    """
    sizes = [(latent_height, latent_width)]
    for _ in unet_config["down_block_types"][:-1]:
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    found = {size for size, kind in zip(sizes, unet_config["down_block_types"]) if "CrossAttn" in kind}
    found |= {size for size, kind in zip(reversed(sizes), unet_config["up_block_types"]) if "CrossAttn" in kind}
    if "CrossAttn" in (unet_config.get("mid_block_type") or ""):
        found.add(sizes[-1])
    return sorted(found, key=lambda size: -size[0] * size[1])

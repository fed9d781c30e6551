"""Single checkpoint files written from random-weight components, in the original (LDM / ControlNet) key layout.

What labs download (``v1-5-pruned-emaonly.safetensors``, ``control_v11f1e_sd15_tile.pth``) uses the key layout of
the original Stable Diffusion and ControlNet code. These helpers invert diffusers' renaming for the UNet, VAE,
CLIP text encoder and ControlNet, so the tests can write such files from the tiny components and check that
loading them gives back exactly the same weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET[name]}.{tail}"


def _encoder_key(key: str, layers: int) -> str | None:
    """A UNet/ControlNet encoder key (time embedding, input blocks, middle block) in the original layout."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0"}  # fmt: skip
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * (layers + 1) + layer
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (layers + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{match[1]}"
    return None


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` keys of a diffusers ``UNet2DConditionModel``."""
    layers = unet.config.layers_per_block
    with_attention = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        original = _encoder_key(key, layers)
        if original is None and key.startswith("conv_norm_out."):
            original = "out.0." + key.split(".", 1)[1]
        if original is None and key.startswith("conv_out."):
            original = "out.2." + key.split(".", 1)[1]
        if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            index = block * (layers + 1) + layer
            original = f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            block = int(match[1])
            original = f"output_blocks.{block * (layers + 1) + layers}.{2 if block in with_attention else 1}.conv.{match[2]}"
        assert original is not None, f"no original name for UNet key {key}"
        out[f"model.diffusion_model.{original}"] = value
    return out


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """``first_stage_model.*`` keys of a diffusers ``AutoencoderKL`` (attention projections as 1×1 convolutions)."""
    levels = len(vae.config.up_block_types)
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        original = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        original = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", original)
        original = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", original)
        original = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block.", original)
        original = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.", original)
        original = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", original)
        if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", original):
            original = f"{match[1]}.mid.attn_1.{attention[match[2]]}.{match[3]}"
            if match[3] == "weight" and match[2] != "group_norm":
                value = value[:, :, None, None]
        out[f"first_stage_model.{original}"] = value
    return out


def text_encoder_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.text_model.*`` keys of a transformers ``CLIPTextModel`` (SD 1.x layout).

    transformers 5 names the keys without the ``text_model.`` level that 4.x and the original files have.
    """
    return {
        "cond_stage_model.transformer." + (key if key.startswith("text_model.") else f"text_model.{key}"): value
        for key, value in text_encoder.state_dict().items()
    }


def sd_checkpoint(components: dict) -> dict[str, torch.Tensor]:
    """A full Stable Diffusion checkpoint in the original layout from ``unet``, ``vae`` and ``text_encoder``."""
    return {
        **unet_to_original(components["unet"]),
        **vae_to_original(components["vae"]),
        **text_encoder_to_original(components["text_encoder"]),
    }


def controlnet_to_original(controlnet, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``ControlNetModel`` in the original ControlNet layout (``zero_convs``, ``input_hint_block``)."""
    layers = controlnet.config.layers_per_block
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in controlnet.state_dict().items():
        original = _encoder_key(key, layers)
        if match := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            original = f"zero_convs.{match[1]}.0.{match[2]}"
        if key.startswith("controlnet_mid_block."):
            original = "middle_block_out.0." + key.split(".", 1)[1]
        if match := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.*)", key):
            index = 0 if match[1] == "conv_in" else 2 * (blocks + 1) if match[1] == "conv_out" else 2 * (int(match[2]) + 1)
            original = f"input_hint_block.{index}.{match[3]}"
        assert original is not None, f"no original name for ControlNet key {key}"
        out[prefix + original] = value
    return out


def write_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` as ``.safetensors`` or (any other suffix) a pickled ``{"state_dict": ...}`` like a ``.ckpt``."""
    state = {key: value.detach().contiguous().clone() for key, value in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def config_folder(pipeline, folder: Path) -> Path:
    """The pipeline's diffusers folder with every weight file removed: configs, tokenizer and scheduler only."""
    pipeline.save_pretrained(folder)
    for weights in [*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]:
        weights.unlink()
    return folder

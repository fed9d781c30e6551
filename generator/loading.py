"""Loading Stable Diffusion components and ControlNets from what labs have: folders, cached hub ids, single files.

Three kinds of reference are accepted wherever a model is named (``--model``, ``--panorama-model``,
``--controlnet``, ``--sr-base``, ``--sr-control``):

* a local folder in diffusers layout (``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; a
  ControlNet folder holds ``config.json`` and its weights), e.g. Diffusion360's ``sr-base`` and ``sd-i2p``;
* a hub id, which must already be in the local Hugging Face cache when offline;
* a **single file**, ``.safetensors`` or ``.ckpt`` (also ``.pt``/``.pth``/``.bin``): a full Stable Diffusion
  checkpoint in the original (LDM) key layout, or a ControlNet in the original or in diffusers' layout.

A single file holds weights but neither the tokenizer nor the scheduler nor the model configs. For a base
model they come from a *config source*: a diffusers folder or cached hub id of the same architecture, chosen by
an option (``--model-config`` and its siblings) or, by default, from the architecture detected in the file's
keys (:data:`ARCHITECTURES`). Nothing is downloaded: a config source that is not on disk is a one-line error. A
ControlNet's config is derived from the base model's UNet, with its conditioning channels and conditioning
embedding read from the file, so a ControlNet file needs no config source.

Every loader takes the dtype it is asked for and loads every module in it; diffusers' model loaders take
``torch_dtype`` in every supported release, transformers' take ``dtype`` (4.56 and later). Pipeline-level
``from_pretrained`` is avoided: diffusers 0.36 drops its ``dtype`` argument and 0.42 deprecates ``torch_dtype``.
The tokenizer is always the fast (Rust) CLIP tokenizer, whose character offsets map prompt phrases to tokens.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from study.errors import PanostudyError

#: File suffixes read as single-file checkpoints.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Architecture:
    """A base-model architecture that a single file can have, and where its configs come from by default."""

    name: str
    config: str
    text_width: int
    in_channels: int


#: Architecture shorthands for ``--model-config`` and the defaults chosen by detection.
ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture("SD 1.x", "stable-diffusion-v1-5/stable-diffusion-v1-5", 768, 4),
    "sd15-inpainting": Architecture("SD 1.x inpainting", "stable-diffusion-v1-5/stable-diffusion-inpainting", 768, 9),
    "sd21-base": Architecture("SD 2.x", "stabilityai/stable-diffusion-2-1-base", 1024, 4),
}

LDM_UNET_PREFIX = "model.diffusion_model."


def check_device(device: str, fp16: bool, cpu_offload: bool) -> None:
    """Half precision and CPU offload need a CUDA device; refuse them elsewhere in one line."""
    if (fp16 or cpu_offload) and not str(device).startswith("cuda"):
        raise PanostudyError(f"--fp16 and --cpu-offload need a CUDA GPU but the device is '{device}'; drop them")


def is_single_file(reference: str | None) -> bool:
    """Whether ``reference`` names a checkpoint file (by suffix) rather than a folder, hub id or ``tiny``."""
    return reference is not None and Path(reference).suffix.lower() in SINGLE_FILE_SUFFIXES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or pickled (``.ckpt``/``.pt``/``.pth``/``.bin``) checkpoint.

    Pickles are read with ``weights_only=True`` (no code runs); a ``state_dict`` entry is unwrapped.

    Raises
    ------
    PanostudyError
        The file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PanostudyError(f"{option} {path}: no such file; give a .safetensors or .ckpt checkpoint")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip raise unrelated types for a file that is no checkpoint
        raise PanostudyError(
            f"{option} {path}: not a checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
            "give a .safetensors or .ckpt file of Stable Diffusion or ControlNet weights"
        ) from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise PanostudyError(f"{option} {path}: holds no weight tensors; give a Stable Diffusion or ControlNet checkpoint")
    return tensors


@dataclass(frozen=True)
class CheckpointInfo:
    """What the keys and shapes of a single file say it is.

    Attributes
    ----------
    kind : str
        ``"sd"`` (full Stable Diffusion, LDM layout), ``"sdxl"``, ``"controlnet"``, ``"lora"``, ``"unet"``
        (a bare UNet), ``"vae"`` or ``"unknown"``.
    text_width : int or None
        Width of the text embedding the cross-attention reads (768 SD 1.x, 1024 SD 2.x).
    in_channels : int or None
        Latent channels into the UNet or ControlNet (9 for an inpainting UNet).
    model_channels : int or None
        Channels of the first UNet/ControlNet block.
    conditioning_channels : int or None
        ControlNet only: channels of its control image (3 RGB, 4 for Diffusion360's mask + RGB).
    conditioning_embedding : tuple of int or None
        ControlNet only: output channels of its conditioning-embedding blocks.
    """

    kind: str
    text_width: int | None = None
    in_channels: int | None = None
    model_channels: int | None = None
    conditioning_channels: int | None = None
    conditioning_embedding: tuple[int, ...] | None = None

    def architecture(self) -> str | None:
        """The key of :data:`ARCHITECTURES` a base checkpoint has, or None."""
        for key, architecture in ARCHITECTURES.items():
            if (self.text_width, self.in_channels) == (architecture.text_width, architecture.in_channels):
                return key
        return None


def _attention_width(state: dict[str, torch.Tensor], prefix: str) -> int | None:
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[1])
    return None


def describe_checkpoint(state: dict[str, torch.Tensor]) -> CheckpointInfo:
    """Classify a state dict by its keys (see :class:`CheckpointInfo`)."""
    keys = list(state)
    if any("lora_" in key or ".lora." in key or key.startswith("lora") for key in keys):
        return CheckpointInfo("lora")
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return CheckpointInfo("sdxl")
    hint_prefix = next(
        (prefix for prefix in ("control_model.", "") if f"{prefix}input_hint_block.0.weight" in state), None
    )
    if hint_prefix is not None:  # ControlNet, original layout
        hints = sorted(
            (int(key.split(".")[1 + hint_prefix.count(".")]), value)
            for key, value in state.items()
            if key.startswith(f"{hint_prefix}input_hint_block.") and key.endswith(".weight")
        )
        return CheckpointInfo(
            "controlnet",
            text_width=_attention_width(state, hint_prefix),
            in_channels=int(state[f"{hint_prefix}input_blocks.0.0.weight"].shape[1]),
            model_channels=int(state[f"{hint_prefix}input_blocks.0.0.weight"].shape[0]),
            conditioning_channels=int(hints[0][1].shape[1]),
            conditioning_embedding=tuple(int(value.shape[0]) for _, value in hints[:-1][::2]),
        )
    if "controlnet_cond_embedding.conv_in.weight" in state:  # ControlNet, diffusers layout
        blocks = sorted(
            (int(key.split(".")[2]), value)
            for key, value in state.items()
            if key.startswith("controlnet_cond_embedding.blocks.") and key.endswith(".weight")
        )
        conv_in = state["controlnet_cond_embedding.conv_in.weight"]
        return CheckpointInfo(
            "controlnet",
            text_width=_attention_width(state, ""),
            in_channels=int(state["conv_in.weight"].shape[1]),
            model_channels=int(state["conv_in.weight"].shape[0]),
            conditioning_channels=int(conv_in.shape[1]),
            conditioning_embedding=(int(conv_in.shape[0]), *(int(value.shape[0]) for _, value in blocks[1::2])),
        )
    if f"{LDM_UNET_PREFIX}input_blocks.0.0.weight" in state:
        conv_in = state[f"{LDM_UNET_PREFIX}input_blocks.0.0.weight"]
        return CheckpointInfo(
            "sd",
            text_width=_attention_width(state, LDM_UNET_PREFIX),
            in_channels=int(conv_in.shape[1]),
            model_channels=int(conv_in.shape[0]),
        )
    if "conv_in.weight" in state and any(key.startswith("down_blocks.") for key in keys):
        return CheckpointInfo("unet")
    if any(key.startswith(("encoder.down.", "first_stage_model.", "encoder.down_blocks.")) for key in keys):
        return CheckpointInfo("vae")
    return CheckpointInfo("unknown")


_WRONG_KIND = {
    "lora": "is a LoRA (low-rank adapter), not a full checkpoint; give the base model it was trained on",
    "sdxl": "is an SDXL checkpoint; panostudy runs SD 1.x and SD 2.x",
    "unet": "holds a bare UNet; give the whole model (a diffusers folder or a full .safetensors/.ckpt checkpoint)",
    "vae": "holds only a VAE; give the whole model (a diffusers folder or a full .safetensors/.ckpt checkpoint)",
    "unknown": "is not a Stable Diffusion or ControlNet checkpoint (no UNet or ControlNet weights in it)",
}


def _cached_config_folder(reference: str, what: str) -> Path:
    """A local folder of a config source: the folder itself, or a hub id's snapshot in the local cache."""
    if Path(reference).is_dir():
        return Path(reference)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(reference, local_files_only=True, allow_patterns=["*.json", "*.txt", "tokenizer/*"])
        )
    except Exception:  # huggingface_hub raises several types for an id that is not cached or not an id at all
        raise PanostudyError(
            f"{what} '{reference}' is not a local folder and not in the local Hugging Face cache; "
            "give a diffusers folder of the same architecture (its config files and tokenizer suffice)"
        ) from None


def resolve_config_source(config: str | None, info: CheckpointInfo, path: Path, option: str) -> Path:
    """The local folder whose configs, tokenizer and scheduler go with a base checkpoint file.

    ``config`` is an :data:`ARCHITECTURES` key, a diffusers folder or a cached hub id; None takes the
    architecture detected in the file. The folder's UNet config must fit the checkpoint's shapes.
    """
    config_option = f"{option}-config"
    detected = info.architecture()
    if config is None:
        if detected is None:
            raise PanostudyError(
                f"{option} {path}: its architecture (text width {info.text_width}, {info.in_channels} latent channels) "
                f"is none of {', '.join(ARCHITECTURES)}; give {config_option} with a diffusers folder of that architecture"
            )
        config = ARCHITECTURES[detected].config
        what = f"{option} {path} is an {ARCHITECTURES[detected].name} checkpoint; its configs come from"
    else:
        what = config_option
        config = ARCHITECTURES[config].config if config in ARCHITECTURES else config
    folder = _cached_config_folder(config, what)
    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        raise PanostudyError(f"{config_option} {config}: has no unet/config.json; give a Stable Diffusion folder in diffusers layout")
    wanted = json.loads(unet_config.read_text(encoding="utf-8"))
    width = wanted.get("cross_attention_dim")
    channels = wanted.get("block_out_channels", [None])[0]
    if (width, wanted.get("in_channels"), channels) != (info.text_width, info.in_channels, info.model_channels):
        raise PanostudyError(
            f"{option} {path} does not match the configs of {config}: the file has text width {info.text_width}, "
            f"{info.in_channels} latent channels and {info.model_channels} first-block channels, the config "
            f"{width}, {wanted.get('in_channels')} and {channels}; give {config_option} of the file's architecture"
        )
    return folder


def fast_tokenizer(source: str | Path, subfolder: str | None = "tokenizer"):
    """The fast CLIP tokenizer of a folder or cached hub id (offsets map phrases to tokens)."""
    from transformers import CLIPTokenizerFast

    if subfolder is None:
        return CLIPTokenizerFast.from_pretrained(str(source))
    return CLIPTokenizerFast.from_pretrained(str(source), subfolder=subfolder)


def scheduler_from(source: str | Path):
    """The scheduler a model folder or cached hub id names in ``scheduler/scheduler_config.json``."""
    import diffusers

    config = diffusers.DDIMScheduler.load_config(str(source), subfolder="scheduler")
    scheduler_class = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return scheduler_class.from_config(config)


def load_base_components(
    reference: str, *, dtype: torch.dtype = torch.float32, config: str | None = None, option: str = "--model"
) -> dict:
    """``vae``, ``text_encoder``, ``tokenizer`` (fast), ``unet``, ``scheduler`` of a Stable Diffusion model.

    Parameters
    ----------
    reference : str
        A diffusers folder, a hub id in the local cache, or a single checkpoint file (see the module docstring).
    dtype : torch.dtype
        Every module is loaded in it.
    config : str, optional
        Single files only: their config source (an :data:`ARCHITECTURES` key, a diffusers folder or a cached
        hub id); default from the architecture detected in the file.
    option : str
        The CLI option that named ``reference``, for messages.

    Raises
    ------
    PanostudyError
        One line naming the option and the file or id.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if is_single_file(reference):
        return _single_file_components(Path(reference), dtype, config, option)
    if config is not None:
        raise PanostudyError(f"{option}-config: only a single-file {option} needs a config source; drop it")
    try:
        return {
            "vae": AutoencoderKL.from_pretrained(reference, subfolder="vae", torch_dtype=dtype),
            "text_encoder": CLIPTextModel.from_pretrained(reference, subfolder="text_encoder", dtype=dtype),
            "tokenizer": fast_tokenizer(reference),
            "unet": UNet2DConditionModel.from_pretrained(reference, subfolder="unet", torch_dtype=dtype),
            "scheduler": scheduler_from(reference),
        }
    except (OSError, ValueError) as exc:
        raise PanostudyError(
            f"{option} '{reference}': cannot load a Stable Diffusion model ({_first_line(exc)}); pass a local "
            "diffusers folder, a hub id in the local cache, or a .safetensors/.ckpt checkpoint"
        ) from None


def _single_file_components(path: Path, dtype: torch.dtype, config: str | None, option: str) -> dict:
    from diffusers import StableDiffusionPipeline

    info = describe_checkpoint(read_state_dict(path, option))
    if info.kind == "controlnet":
        raise PanostudyError(f"{option} {path}: is a ControlNet; give it as --controlnet or --sr-control")
    if info.kind != "sd":
        raise PanostudyError(f"{option} {path}: {_WRONG_KIND[info.kind]}")
    folder = resolve_config_source(config, info, path, option)
    try:
        pipeline = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(folder),
            torch_dtype=dtype,
            local_files_only=True,
            tokenizer=fast_tokenizer(folder),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # diffusers' conversion raises KeyError/ValueError/RuntimeError on a file that does not fit
        raise PanostudyError(
            f"{option} {path}: does not load with the configs of {folder} ({type(exc).__name__}: {_first_line(exc)}); "
            f"give {option}-config of the file's architecture"
        ) from None
    components = {name: getattr(pipeline, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    # A checkpoint without text-encoder or VAE weights would leave modules at random init: refuse it.
    for name in ("vae", "text_encoder", "unet"):
        if any(parameter.device.type == "meta" for parameter in components[name].parameters()):
            raise PanostudyError(f"{option} {path}: has no {name} weights; give a full Stable Diffusion checkpoint")
    return components


def load_controlnet(reference: str, *, dtype: torch.dtype, unet_config, option: str = "--controlnet"):
    """A ControlNet from a folder, a cached hub id, or a single file fitted to the base model's ``unet_config``.

    A single file's config is the base UNet's, with the input, conditioning channels and conditioning-embedding
    widths read from the file, so any ControlNet trained for that base loads without a config source.

    Raises
    ------
    PanostudyError
        One line: not a ControlNet, or trained for another base architecture.
    """
    from diffusers import ControlNetModel

    if not is_single_file(reference):
        try:
            return ControlNetModel.from_pretrained(reference, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise PanostudyError(
                f"{option} '{reference}': cannot load a ControlNet ({_first_line(exc)}); pass a ControlNet folder, a "
                "hub id in the local cache, or a .safetensors/.ckpt ControlNet file"
            ) from None
    path = Path(reference)
    state = read_state_dict(path, option)
    info = describe_checkpoint(state)
    if info.kind == "sd":
        raise PanostudyError(f"{option} {path}: is a full Stable Diffusion checkpoint, not a ControlNet; give it as a base model")
    if info.kind != "controlnet":
        raise PanostudyError(f"{option} {path}: {_WRONG_KIND[info.kind].replace('Stable Diffusion or ControlNet', 'ControlNet')}")
    base = dict(unet_config)
    if (info.text_width, info.model_channels) != (base["cross_attention_dim"], base["block_out_channels"][0]):
        raise PanostudyError(
            f"{option} {path}: was trained for a base with text width {info.text_width} and {info.model_channels} "
            f"first-block channels, but the base model has {base['cross_attention_dim']} and "
            f"{base['block_out_channels'][0]}; give a ControlNet of the base's architecture"
        )
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {key: value for key, value in base.items() if key in accepted} | {
        "_class_name": "ControlNetModel",
        "in_channels": info.in_channels,
        "conditioning_channels": info.conditioning_channels,
        "conditioning_embedding_out_channels": list(info.conditioning_embedding),
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "config.json").write_text(json.dumps(config), encoding="utf-8")
        try:
            return ControlNetModel.from_single_file(state, config=folder, torch_dtype=dtype, local_files_only=True)
        except Exception as exc:  # conversion and loading raise KeyError/ValueError/RuntimeError on a mismatch
            raise PanostudyError(
                f"{option} {path}: does not fit the base model's UNet ({type(exc).__name__}: {_first_line(exc)})"
            ) from None

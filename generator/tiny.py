"""A tiny random-weight Stable Diffusion, built offline from configs.

Nothing here is downloaded: the tokenizer, text encoder, UNet and VAE are made in code with random weights. The
pipeline runs end to end on a CPU in well under a second per step at 64×64, which is what the tests and the demo
need when no real model is available. **Its images are not meaningful**: they are noise shaped by random weights,
good for checking shapes, determinism, seams and data flow, never for judging image quality.

Sizes (``vae_scale_factor = 2``): a 64×64 request gives a 32×32 latent and 16×16 cross-attention maps from four
layers (``down_blocks.1``, ``mid_block``, ``up_blocks.0`` ×2); a 64×128 request gives 16×32 maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizerFast

    from generator.mask_guided_pipeline import MaskGuidedStableDiffusionPipeline

#: Words that become single tokens in the offline tokenizer, so that typical scene prompts stay well under the
#: 77-token limit; any other word still tokenizes, one byte per token.
TINY_VOCABULARY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "with", "of", "on", "in", "at", "by", "near", "under", "between", "behind", "along",
    "red", "blue", "green", "white", "black", "gray", "grey", "brown", "yellow", "dark", "bright", "sunny", "cloudy",
    "tall", "small", "large", "old", "modern", "wooden", "open", "empty", "busy", "quiet", "snowy", "rocky",
    "car", "cars", "bus", "truck", "bicycle", "vehicle", "road", "asphalt", "street", "sidewalk", "crosswalk",
    "traffic", "light", "sign", "pole", "fence", "wall", "building", "buildings", "house", "houses", "city",
    "person", "people", "pedestrian", "pedestrians", "walking", "driving", "parked",
    "sky", "cloud", "clouds", "sun", "tree", "trees", "vegetation", "grass", "terrain", "mountain", "mountains",
    "hill", "hills", "valley", "forest", "rock", "rocks", "snow", "lake", "river", "water", "path", "trail",
    "room", "living", "indoor", "interior", "sofa", "couch", "table", "chair", "chairs", "lamp", "floor",
    "window", "windows", "bed", "kitchen", "shelf", "rug", "plant", "ceiling", "door",
    "photo", "photograph", "view", "scene", "landscape", "panorama", "realistic", "detailed",
    "blurry", "distorted", "low", "high", "quality", "lowres", "text", "watermark",
)  # fmt: skip


def offline_clip_tokenizer() -> CLIPTokenizerFast:
    """Build a small byte-level CLIP tokenizer in code, without any download.

    Returns
    -------
    transformers.CLIPTokenizerFast
        The fast tokenizer (character offsets, as the mask guidance needs). Vocabulary: the two CLIP special
        tokens, the 256 byte symbols with and without the end-of-word suffix, and the merge products that turn
        each word of :data:`TINY_VOCABULARY_WORDS` into one token. ``model_max_length`` is 77 as in CLIP.

    Notes
    -----
    Each listed word gets the left-to-right merges ``w[0] w[1] → w[:2]``, ``w[:2] w[2] → w[:3]``, … with the
    end-of-word suffix on the last symbol. Every merge product is in the vocabulary, so any text tokenizes to
    known ids even when merges of different words compete. The files are written to a temporary folder and read
    back with ``from_pretrained``, the one constructor that behaves alike in transformers 4.x and 5.x.
    """
    import json
    import tempfile
    from pathlib import Path

    from tokenizers import pre_tokenizers

    from generator.loading import fast_tokenizer

    bytes_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *bytes_alphabet, *(c + "</w>" for c in bytes_alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TINY_VOCABULARY_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    settings = {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        Path(folder, "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
        return fast_tokenizer(folder, subfolder=None)


def tiny_sd_components(seed: int = 0) -> dict:
    """Build the components of a tiny random-weight Stable Diffusion pipeline.

    Parameters
    ----------
    seed : int
        Seeds the weight initialisation; the same seed gives the same weights. The global torch RNG state is
        left as it was.

    Returns
    -------
    dict
        ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (DDIM), ``safety_checker=None``,
        ``feature_extractor=None``, ``image_encoder=None``: the keyword arguments of
        ``StableDiffusionPipeline(...)`` and of its subclasses. Default image size 64×64.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = offline_clip_tokenizer()
    # diffusers initialises weights from the global RNG; forking keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                max_position_embeddings=tokenizer.model_max_length,
                vocab_size=len(tokenizer),
            )
        )
    return _pipeline_components(unet, vae, text_encoder, tokenizer)


def _pipeline_components(unet, vae, text_encoder, tokenizer) -> dict:
    """The keyword arguments of a Stable Diffusion pipeline, with SD 1.5's DDIM scheduler and no safety checker."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def sd15_sized_components(seed: int = 0, *, device: str = "cpu", dtype=None) -> dict:
    """Random-weight components with Stable Diffusion 1.5's architecture (about 1.07 B parameters).

    For benchmarks: random weights make noise images but cost exactly what real weights of the same
    architecture cost. The text encoder is CLIP-L-sized but for its vocabulary (the offline tokenizer's).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = offline_clip_tokenizer()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                max_position_embeddings=77,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    if dtype is not None:
        unet, vae, text_encoder = unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)
    return _pipeline_components(unet, vae, text_encoder, tokenizer)


def tiny_mask_guided_pipeline(seed: int = 0) -> MaskGuidedStableDiffusionPipeline:
    """The mask-guided pipeline on :func:`tiny_sd_components` (placeholder images, not meaningful)."""
    from generator.mask_guided_pipeline import MaskGuidedStableDiffusionPipeline

    pipeline = MaskGuidedStableDiffusionPipeline(**tiny_sd_components(seed), requires_safety_checker=False)
    pipeline.warn_attention_fallback = False  # its 16x16 maps at 64² are what it is built for, nothing to warn of
    return pipeline


def tiny_controlnet(seed: int = 0, conditioning_channels: int = 4):
    """A random-weight ControlNet that fits the UNet of :func:`tiny_sd_components`.

    Parameters
    ----------
    seed : int
        Seeds the weight initialisation (the global torch RNG state is left as it was).
    conditioning_channels : int
        4 for a mask + RGB control (Diffusion360's ``sd-i2p`` layout), 3 for an RGB control with masked pixels
        at −1 (``control_v11p_sd15_inpaint``).

    Returns
    -------
    diffusers.ControlNetModel
        Its conditioning embedding halves the resolution once, as the tiny VAE does (``vae_scale_factor = 2``).
    """
    import torch
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        controlnet = ControlNetModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            in_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            conditioning_embedding_out_channels=(16, 32),
            conditioning_channels=conditioning_channels,
        )
    return controlnet.eval()


def tiny_rrdb_state_dict(scale: int = 4, num_filters: int = 8, num_blocks: int = 1, seed: int = 0) -> dict:
    """The state dict of a random-weight Real-ESRGAN RRDBNet, in the official key layout.

    ``num_filters=64, num_blocks=23`` gives the size of ``RealESRGAN_x4plus.pth``; the defaults give a net that
    runs a 64×128 image in well under a second on a CPU. spandrel detects architecture and scale from the keys.
    """
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 4)
        # Real-ESRGAN's x2/x1 nets pixel-unshuffle their input so that the trunk always upsamples ×4.
        shuffle = 4 // scale if scale < 4 else None
        net = ESRGAN(num_filters=num_filters, num_blocks=num_blocks, scale=scale, shuffle_factor=shuffle)
    return net.state_dict()

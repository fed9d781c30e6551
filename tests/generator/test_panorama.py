"""Stage-2 completion on the tiny random-weight model: size, Eq. 4, seams, front-face fidelity, both control layouts."""

import numpy as np
import pytest
import torch

from generator.panorama_pipeline import (
    PanoramaCompletionPipeline,
    PanoramaSettings,
    circular_blend,
    extend_right,
    load_panorama_pipeline,
)
from generator.projection import front_face_canvas, reprojection_error
from generator.seams import discontinuity_score, wrap_l1_ratio
from study.errors import PanostudyError, StimulusError
from tests.generator.panorama_fixtures import SmoothingDenoiser, one_torch_thread, smooth_image  # noqa: F401 (autouse fixture)

TINY = dict(height=64, width=128, steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def pipe():
    return load_panorama_pipeline("tiny", None)


@pytest.fixture(scope="module")
def smoothing_pipe():
    """The tiny pipeline whose UNet is replaced by a denoiser with a (non-periodic) smoothness prior."""
    pipeline = load_panorama_pipeline("tiny", None)
    pipeline.unet = SmoothingDenoiser(pipeline.unet, pipeline.scheduler.alphas_cumprod)
    return pipeline


def test_circular_blend_is_eq_4_with_a_linear_weight():
    width, extent = 6, 4
    canvas = torch.arange(width, dtype=torch.float32).repeat(1, 1, 2, 1) * 10  # columns 0, 10, ..., 50
    extended = extend_right(canvas, extent)
    extended[..., width:] = -1.0  # the wrapped continuation, as if generated beside column 5
    blended = circular_blend(extended, width, extent)
    weights = torch.arange(extent) / extent
    expected = weights * canvas[..., :extent] + (1 - weights) * -1.0
    torch.testing.assert_close(blended[..., :extent], expected)
    assert blended[0, 0, 0, 0] == -1.0  # w = 0 at the seam: the canvas takes the wrapped column
    torch.testing.assert_close(blended[..., extent:], extended[..., extent:])  # nothing else moves
    assert extended[0, 0, 0, 0] == 0.0  # input left untouched


def test_output_is_2_to_1_at_the_requested_size_and_reproducible(pipe):
    settings = PanoramaSettings(**TINY)
    first = pipe(smooth_image(), "a street", settings, seed=5)
    again = pipe(smooth_image(), "a street", settings, seed=5)
    other = pipe(smooth_image(), "a street", settings, seed=6)
    assert first.image.shape == (64, 128, 3) and first.image.dtype == np.uint8
    assert (first.image == again.image).all()
    assert not (first.image == other.image).all()
    assert set(first.timings) == {"projection", "prepare", "completion", "decode", "paste"}


def test_blending_closes_the_seam_on_the_same_seed(smoothing_pipe):
    image = smooth_image()
    on = smoothing_pipe(image, "a street", PanoramaSettings(**TINY, blend_extend=4), seed=0).image
    off = smoothing_pipe(
        image, "a street", PanoramaSettings(**TINY, circular_blending=False, wrap_decode=False), seed=0
    ).image
    # Interior column boundaries at the seam's phase (away from the front face) are what "seamless" looks like.
    shifts = [k for k in range(8, 128, 8) if abs(k - 64) > 24]
    interior_ds = np.array([discontinuity_score(np.roll(on, k, axis=1)) for k in shifts])
    interior_l1 = np.array([wrap_l1_ratio(np.roll(on, k, axis=1)) for k in shifts])
    assert discontinuity_score(on) < 0.5 * discontinuity_score(off)
    assert wrap_l1_ratio(off) > 3.0
    assert wrap_l1_ratio(on) < interior_l1.mean() + 2 * interior_l1.std()
    assert discontinuity_score(on) < interior_ds.mean() + 2 * interior_ds.std()


def test_wrap_decode_keeps_a_periodic_latent_seamless(pipe):
    # A latent that is periodic in x has no seam; only the decoder's zero padding at the edges can make one.
    x = torch.linspace(0, 2 * np.pi, 65)[:-1]
    waves = torch.stack([torch.sin(k * x + phase) for k, phase in [(1, 0), (2, 1), (3, 2), (1, 3)]])
    noise = torch.randn(1, 4, 32, 64, generator=torch.Generator().manual_seed(0))
    latent = waves[None, :, None, :].repeat(1, 1, 32, 1) * 2 + 0.3 * noise

    def decoded(wrap: bool) -> np.ndarray:
        with torch.no_grad():
            image = pipe.decode(latent, PanoramaSettings(height=64, width=128, wrap_decode=wrap))
        return ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    wrapped, plain = decoded(True), decoded(False)
    interior = np.mean([wrap_l1_ratio(np.roll(wrapped, k, axis=1)) for k in range(8, 128, 8)])
    assert wrap_l1_ratio(wrapped) <= interior < wrap_l1_ratio(plain)
    assert discontinuity_score(wrapped) < 0.5 * discontinuity_score(plain)


def test_front_face_stays_faithful(pipe):
    image = smooth_image()
    result = pipe(image, "a street", PanoramaSettings(**TINY), seed=2)
    canvas = front_face_canvas(image, 64, 128)
    baseline = reprojection_error(canvas.rgb, canvas.face)  # the projection's own resampling error
    # Stated bound: the completed panorama's front face is within 0.5 grey levels of the pure projection's error,
    # and under 5 grey levels of the 32-pixel input face on average (steep ramps: 8 levels per pixel; the
    # panorama is noise elsewhere: random weights).
    assert reprojection_error(result.image, canvas.face) <= baseline + 0.5
    assert reprojection_error(result.image, canvas.face) < 5.0
    assert (result.image[canvas.known] == canvas.rgb[canvas.known]).all()
    unfaithful = pipe(image, "a street", PanoramaSettings(**TINY, keep_known=False), seed=2)
    assert reprojection_error(unfaithful.image, canvas.face) > 10 * reprojection_error(result.image, canvas.face)


def test_three_channel_inpaint_control_and_an_inpainting_unet_share_the_code_path():
    from diffusers import UNet2DConditionModel

    from generator.tiny import tiny_controlnet, tiny_sd_components

    parts = tiny_sd_components(0)
    torch.manual_seed(0)
    inpainting_unet = UNet2DConditionModel(**{**parts["unet"].config, "in_channels": 9})
    pipeline = PanoramaCompletionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=inpainting_unet,
        controlnet=tiny_controlnet(0, conditioning_channels=3),
        scheduler=parts["scheduler"],
    )
    assert pipeline.conditioning_channels == 3 and pipeline.inpainting_unet
    canvas = front_face_canvas(smooth_image(), 64, 128)
    control = pipeline.control_image(smooth_image(), canvas)
    assert control.shape == (1, 3, 64, 128)
    assert (control[0][:, torch.from_numpy(~canvas.known)] == -1).all()
    result = pipeline(smooth_image(), "a room", PanoramaSettings(**TINY), seed=0)
    assert result.image.shape == (64, 128, 3)


def test_four_channel_control_is_mask_then_rgb(pipe):
    canvas = front_face_canvas(smooth_image(), 64, 128)
    control = pipe.control_image(smooth_image(), canvas)
    assert control.shape == (1, 4, 64, 128)
    assert (control[0, 0].numpy() == canvas.known).all()
    known_rgb = control[0, 1:, torch.from_numpy(canvas.known)].T.numpy()
    np.testing.assert_allclose(known_rgb, canvas.rgb[canvas.known] / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "settings, match",
    [
        (PanoramaSettings(height=64, width=100), "2:1"),
        (PanoramaSettings(height=62, width=124), "multiple of 4"),
        (PanoramaSettings(**TINY, blend_extend=100), "blend_extend"),
        (PanoramaSettings(height=64, width=128, steps=0), "steps"),
    ],
)
def test_bad_settings_are_refused_before_any_work(pipe, settings, match):
    with pytest.raises(PanostudyError, match=match):
        pipe(smooth_image(), "a street", settings)


def test_a_real_model_without_controlnet_is_refused():
    with pytest.raises(PanostudyError, match="--controlnet"):
        load_panorama_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", None)


def test_grey_input_is_refused(pipe):
    with pytest.raises(StimulusError, match="uint8"):
        pipe(np.zeros((32, 32), np.uint8), "a street", PanoramaSettings(**TINY))

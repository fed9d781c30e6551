"""Shared helpers of the stage-2 tests (tiny models, smooth test images, a smoothing denoiser)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def smooth_image(height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth, non-periodic (H, W, 3) uint8 test image: ramps in x, y and x + y."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width) + 64], axis=-1).astype(np.uint8)


class SmoothingDenoiser(torch.nn.Module):
    """A stand-in UNet with a local smoothness prior, for seam tests.

    A random-weight UNet produces spatially uncorrelated content, in which no seam can be seen with or without
    blending. This denoiser predicts the noise under which the clean latent is a blurred copy of the current one
    (replicate-padded, so it is *not* periodic), so the denoised latent becomes a smooth random field whose left
    and right edges differ — exactly the situation circular blending must repair. It honours the UNet call
    signature and ignores text and ControlNet residuals.
    """

    def __init__(self, unet, alphas_cumprod: torch.Tensor, passes: int = 3):
        super().__init__()
        self.config = unet.config
        self.alphas_cumprod = alphas_cumprod
        self.passes = passes
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, sample, timestep, encoder_hidden_states=None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, return_dict=False):
        alpha = self.alphas_cumprod[int(timestep)].to(sample.dtype)
        clean = sample
        for _ in range(self.passes):
            clean = F.avg_pool2d(F.pad(clean, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        clean = clean / clean.std().clamp_min(1e-6)
        noise = (sample - alpha.sqrt() * clean) / (1 - alpha).sqrt()
        return (noise,)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch on one thread in a test module that imports this fixture: the tiny models gain nothing from two,
    and two threads slow down several times over when other processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

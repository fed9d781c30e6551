"""Prompt emphasis, ``((best quality))`` style, as Diffusion360 encodes its prompts.

Diffusion360's pipelines encode prompts with the "long prompt weighting" scheme of the diffusers community:
a span in parentheses has its token embeddings multiplied by 1.1 per pair of parentheses, a span in square
brackets divided by 1.1, and ``(text:1.3)`` sets the weight explicitly; afterwards the embeddings are rescaled
so that their mean is what it was before weighting. Its fixed positive suffix (``((best quality))``,
``((ultra high res))``) relies on it, so the ``diffusion360`` preset encodes prompts this way.

.. math:: e'_i = w_i\\, e_i \\cdot \\frac{\\operatorname{mean}(e)}{\\operatorname{mean}(w \\odot e)}

Prompts longer than the text encoder's 75 tokens are truncated, as the plain encoder does. Where the mean is
too close to 0 for the ratio to mean anything (a random-weight text encoder whose final layer norm has no bias
gives means of order 1e-8), the rescaling is skipped.
"""

from __future__ import annotations

import re

import torch

EMPHASIS = 1.1
_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(span, weight)`` pairs; brackets are removed, escaped ones (``\\(``) kept as text.

    >>> parse_weights("a ((red)) car, [blurry], (sky:1.5)")
    [('a ', 1.0), ('red', 1.21), (' car, ', 1.0), ('blurry', 0.909...), (', ', 1.0), ('sky', 1.5)]
    """
    spans: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for span in spans[start:]:
            span[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            spans.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(spans))
        elif token == "[":
            square_open.append(len(spans))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), EMPHASIS)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / EMPHASIS)
        else:
            spans.append([token, 1.0])
    for start in round_open:  # unclosed brackets still emphasise to the end, as in the scheme's reference
        scale(start, EMPHASIS)
    for start in square_open:
        scale(start, 1 / EMPHASIS)
    merged: list[tuple[str, float]] = []
    for span, weight in spans:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + span, weight)
        elif span:
            merged.append((span, round(weight, 6)))
    return merged


def weighted_embeddings(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """``(len(texts), 77, D)`` text embeddings with emphasis applied (see the module docstring)."""
    device = text_encoder.device
    limit = tokenizer.model_max_length - 2
    ids, weights = [], []
    for text in texts:
        row, row_weights = [], []
        for span, weight in parse_weights(text):
            tokens = tokenizer(span, add_special_tokens=False, verbose=False).input_ids
            row += tokens
            row_weights += [weight] * len(tokens)
        row, row_weights = row[:limit], row_weights[:limit]
        padding = limit - len(row)
        ids.append([tokenizer.bos_token_id, *row, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * padding])
        weights.append([1.0, *row_weights, 1.0, *[1.0] * padding])
    embeddings = text_encoder(torch.tensor(ids, device=device))[0]
    factors = torch.tensor(weights, device=device, dtype=embeddings.dtype)
    before = embeddings.float().mean(dim=(-2, -1))
    weighted = embeddings * factors[..., None]
    after = weighted.float().mean(dim=(-2, -1))
    meaningful = after.abs() > 1e-4 * weighted.float().abs().mean(dim=(-2, -1))
    ratio = torch.where(meaningful, before / torch.where(meaningful, after, torch.ones_like(after)), torch.ones_like(after))
    return weighted * ratio.to(embeddings.dtype)[:, None, None]

"""Shared fixtures. `ColourModel` is a small VideoModel for server tests: its picture's colour is
a known function of the prompt (an independent reference for "the prompt changed the picture")."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from ltc_stream.models.base import ChunkResult, VideoModel

# Without a GPU the Triton kernels run in Triton's interpreter. The variable must be set before
# anything imports triton.language (diffusers does, through torch._dynamo, when a test module
# imports it at collection), or triton's own helpers are built for the compiler and every
# interpreted kernel that calls them fails.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

COLOUR_WORDS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40)}


class ColourModel(VideoModel):
    """Fills each frame with the colour named in the prompt (grey if none), a moving bar on top.
    Embeddings are RGB in [0, 1], so blending two prompts blends their colours."""

    name = "colour-test-model"
    height = width = 64
    fps = 16.0
    frames_per_chunk = 4
    steps = 4
    device = torch.device("cpu")

    def __init__(self, chunk_seconds: float = 0.02):
        self.chunk_seconds = chunk_seconds
        self.encoded: list[str] = []

    def encode_prompt(self, text):
        self.encoded.append(text)
        for word, rgb in COLOUR_WORDS.items():
            if word in text.lower():
                return torch.tensor(rgb, dtype=torch.float32) / 255
        return torch.full((3,), 0.5)

    def new_stream(self, seed=0):
        return {"t": 0}

    def generate_chunk(self, state, embedding, *, ltc=True):
        time.sleep(self.chunk_seconds)
        rgb = (embedding.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        frames = np.empty((self.frames_per_chunk, self.height, self.width, 3), np.uint8)
        frames[:] = rgb
        for k in range(self.frames_per_chunk):
            x = (state["t"] + k) % self.width
            frames[k, :8, x:x + 4] = 255
        state["t"] += self.frames_per_chunk
        calls = 3 if ltc else 4
        return ChunkResult(frames=frames, model_calls=calls, steps=4, denoise_s=self.chunk_seconds)


@pytest.fixture
def colour_model():
    return ColourModel()

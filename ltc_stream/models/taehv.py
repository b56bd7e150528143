"""TAEHV's decoder for Wan 2.1 latents, written here from its published architecture
(madebyollin/taehv, MIT): it loads the published `taew2_1.pth` key layout, takes the latents the
diffusion model produces (no scale or shift), and gives RGB frames in [0, 1]; T latent frames
decode to 4T - 3 frames, as the causal Wan VAE does.

The decoder is one `nn.Sequential` (its indices are the checkpoint's key names):
Clamp, conv 16->256, ReLU, three stages of [MemBlock x3, 2x spatial Upsample, TGrow, conv], ReLU,
conv 64->3. A MemBlock mixes each frame with its own input at the previous frame (its memory),
and a TGrow turns each frame into `stride` frames with a 1x1 conv. The memory is the only state
across time, so a stream decodes chunk by chunk with `TAEHVMemory` carried between chunks and
gets the same frames as decoding the whole clip at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelNotFoundError

WIDTHS = (256, 128, 64, 64)
TIME_UPSCALE = (False, True, True)  # the Wan 2.1 decoder: x4 in time over its last two stages


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(conv(cat(x, past)) + skip(x)), `past` being this block's input one frame earlier."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x, past):
        return torch.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """Each frame -> `stride` consecutive frames (a 1x1 conv to stride x channels)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x):  # [N*T, C, H, W] -> [N*T*stride, C, H, W], time-major within each sample
        c = x.shape[1]
        return self.conv(x).reshape(-1, c, *x.shape[2:])


def build_decoder(latent_channels: int = 16) -> nn.Sequential:
    n = WIDTHS
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, n[0]), nn.ReLU()]
    for stage in range(3):
        width, out = n[stage], n[stage + 1]
        layers += [MemBlock(width, width), MemBlock(width, width), MemBlock(width, width), nn.Upsample(scale_factor=2),
                   TGrow(width, 2 if TIME_UPSCALE[stage] else 1), _conv(width, out, bias=False)]
    layers += [nn.ReLU(), _conv(n[3], 3)]
    return nn.Sequential(*layers)


@dataclass
class TAEHVMemory:
    """One stream's decoder state: each MemBlock's input at the last decoded frame, and how many
    raw frames were produced (the first 3 are the start-up frames the VAE does not have)."""

    past: dict[int, torch.Tensor] = field(default_factory=dict)
    frames_out: int = 0


class TAEHVDecoder(nn.Module):
    """Latents [B, 16, T, h, w] -> frames [B, 3, T', 8h, 8w] in [0, 1]."""

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        self.latent_channels = latent_channels
        self.decoder = build_decoder(latent_channels)
        self.time_upscale = 2 ** sum(TIME_UPSCALE)
        self.trim = self.time_upscale - 1  # start-up frames: 4T - 3 frames for T latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, memory: TAEHVMemory | None = None) -> torch.Tensor:
        """Decode a chunk. With `memory` (updated in place) the chunk continues the stream's
        previous chunks; without, it is a whole clip on its own."""
        memory = TAEHVMemory() if memory is None else memory
        b, c, t, h, w = latents.shape
        dtype = next(self.parameters()).dtype
        x = latents.to(dtype).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                frames = x.view(b, -1, *x.shape[1:])
                first = memory.past.get(i, torch.zeros_like(frames[:, :1]))
                past = torch.cat([first, frames[:, :-1]], 1)  # each frame's input one frame earlier
                memory.past[i] = frames[:, -1:].clone()
                x = layer(x, past.reshape(x.shape))
            else:
                x = layer(x)
        video = x.view(b, -1, *x.shape[1:]).clamp(0, 1)
        skip = max(0, self.trim - memory.frames_out)
        memory.frames_out += video.shape[1]
        return video[:, skip:].permute(0, 2, 1, 3, 4)


def fit_tgrow_weights(state: dict[str, torch.Tensor], decoder: nn.Sequential, prefix: str = "decoder.") -> dict:
    """Published files may hold a stride-2 TGrow weight where this decoder has stride 1: keep the
    last frame's output channels, as TAEHV does."""
    out = dict(state)
    for i, layer in enumerate(decoder):
        if isinstance(layer, TGrow):
            key = f"{prefix}{i}.conv.weight"
            want = layer.conv.weight.shape[0]
            if key in out and out[key].shape[0] > want:
                out[key] = out[key][-want:]
    return out


def load_taehv(path: str | Path, device="cpu", dtype=torch.float32) -> TAEHVDecoder:
    """`taew2_1.pth` (or a .safetensors of the same keys) -> TAEHVDecoder. The encoder's keys are
    ignored; the decoder's must all be there with the published shapes."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"TAEHV weights {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = TAEHVDecoder()
    state = fit_tgrow_weights({k: v for k, v in state.items() if k.startswith("decoder.")}, model.decoder)
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if want[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelNotFoundError(
            f"{path} is not a TAEHV Wan 2.1 decoder (taew2_1.pth): "
            + "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in
                        (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys))
    model.load_state_dict(state)
    return model.to(device, dtype).eval()

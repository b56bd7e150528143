"""TAEHV's decoder: the published key layout loads, and decoding chunk by chunk with memory carried
gives the frames of a frame-by-frame functional reference written here from the architecture
(each MemBlock reads its own input one frame earlier; a TGrow turns one frame into `stride`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltc_stream.errors import ModelNotFoundError
from ltc_stream.models.taehv import load_taehv

from real_model_fixtures import TAEHV_DECODER, taehv_published_state


def reference_decode(state: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame decode with F.conv2d on the published state dict: [1, 16, T, h, w] ->
    [1, 3, 4T - 3, 8h, 8w] in [0, 1]."""
    memory: dict[int, torch.Tensor] = {}
    frames: list[torch.Tensor] = []

    def conv(i, x, sub=""):
        weight = state[f"decoder.{i}.{sub}weight"]
        bias = state.get(f"decoder.{i}.{sub}bias")
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)

    def run(x, start):
        for i in range(start, 23):
            spec = TAEHV_DECODER.get(i)
            if i == 0:
                x = torch.tanh(x / 3) * 3
            elif i in (2, 21):
                x = torch.relu(x)
            elif i in (6, 12, 18):
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            elif spec[0] == "mem":
                past = memory.get(i, torch.zeros_like(x))
                memory[i] = x
                h = torch.relu(conv(i, torch.cat([x, past], 1), "conv.0."))
                h = torch.relu(conv(i, h, "conv.2."))
                x = torch.relu(conv(i, h, "conv.4.") + x)
            elif spec[0] == "grow":
                n, stride = spec[1], spec[2]
                weight = state[f"decoder.{i}.conv.weight"][-n * stride:]  # stride-1 file quirk: the last slice
                grown = F.conv2d(x, weight)
                for k in range(stride):
                    run(grown[:, k * n:(k + 1) * n], i + 1)
                return
            else:
                x = conv(i, x)
        frames.append(x.clamp(0, 1))

    for t in range(latents.shape[2]):
        run(latents[:, :, t], 0)
    return torch.stack(frames[3:], 2)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    state = taehv_published_state(seed=1)
    torch.save(state, path)
    return path, state


@torch.no_grad()
def test_streaming_chunks_equal_whole_clip_and_frame_by_frame_reference(published):
    from ltc_stream.models.taehv import TAEHVMemory

    path, state = published
    decoder = load_taehv(path)
    z = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(0))
    reference = reference_decode(state, z)
    assert reference.shape == (1, 3, 4 * 6 - 3, 32, 48)
    assert 0.1 < ((reference > 0) & (reference < 1)).float().mean() < 0.9  # not all clamped away
    whole = decoder.decode(z)
    torch.testing.assert_close(whole, reference, atol=2e-5, rtol=1e-4)
    memory = TAEHVMemory()
    chunks = [decoder.decode(z[:, :, a:b], memory) for a, b in ((0, 1), (1, 3), (3, 6))]
    assert [c.shape[2] for c in chunks] == [1, 8, 12]  # the first latent gives one frame, the others four
    torch.testing.assert_close(torch.cat(chunks, 2), reference, atol=2e-5, rtol=1e-4)


def test_published_layout_loads_and_wrong_files_are_named(published, tmp_path):
    path, state = published
    decoder = load_taehv(path)
    # the stride-1 TGrow stored at stride 2 keeps its last 256 output channels
    torch.testing.assert_close(decoder.decoder[7].conv.weight, state["decoder.7.conv.weight"][256:])
    assert sum(p.numel() for p in decoder.parameters()) == sum(
        v.numel() for k, v in state.items() if k.startswith("decoder.") and k != "decoder.7.conv.weight") + 256 * 256
    exact = tmp_path / "exact.pth"
    torch.save(taehv_published_state(seed=1, stored_grow_stride=1), exact)
    load_taehv(exact)
    broken = dict(state)
    del broken["decoder.9.conv.2.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ModelNotFoundError, match=r"missing: decoder\.9\.conv\.2\.bias"):
        load_taehv(tmp_path / "broken.pth")
    wide = dict(state)
    wide["decoder.1.weight"] = torch.zeros(256, 48, 3, 3)  # a Wan 2.2 (48-channel) decoder
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ModelNotFoundError, match=r"wrong shape: decoder\.1\.weight"):
        load_taehv(tmp_path / "wide.pth")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_taehv(tmp_path / "absent.pth")

"""How a stream takes up a new prompt (`Steering`), and the generator thread that uses it."""
import time

import pytest
import torch

from ltc_stream.errors import ConfigError
from ltc_stream.stream import StreamGenerator, Steering

from conftest import COLOUR_WORDS, ColourModel

RED, BLUE = (torch.tensor(COLOUR_WORDS[c], dtype=torch.float32) / 255 for c in ("red", "blue"))


def advance(steering, model, chunks):
    """Generate `chunks` chunks; return (state, embedding) of each."""
    out = []
    for _ in range(chunks):
        state, emb = steering.next()
        model.generate_chunk(state, emb)
        out.append((state, emb))
    return out


def test_cut_starts_a_fresh_context_with_the_new_prompt_at_once():
    model = ColourModel(chunk_seconds=0)
    steering = Steering(model, RED, seed=3, mode="cut")
    before = advance(steering, model, 3)
    assert all(state is before[0][0] for state, _ in before) and before[-1][0]["t"] == 3 * model.frames_per_chunk
    steering.set(BLUE)
    steering.set(BLUE)  # two prompts before the next chunk: one cut
    after = advance(steering, model, 2)
    assert after[0][0] is not before[0][0] and after[1][0] is after[0][0]
    assert after[-1][0]["t"] == 2 * model.frames_per_chunk  # the fresh context has seen only these two chunks
    assert torch.equal(after[0][1], BLUE) and torch.equal(after[1][1], BLUE)  # no blend
    assert steering.cuts == 1


def test_blend_keeps_the_context_and_morphs_the_prompt():
    model = ColourModel(chunk_seconds=0)
    steering = Steering(model, RED, mode="blend", blend_chunks=2)
    first = advance(steering, model, 1)
    steering.set(BLUE)
    after = advance(steering, model, 3)
    assert all(state is first[0][0] for state, _ in after)
    assert torch.allclose(after[0][1], (RED + BLUE) / 2) and torch.equal(after[1][1], BLUE)
    assert steering.cuts == 0


def test_the_model_chooses_unless_told_and_bad_modes_are_refused():
    model = ColourModel()
    assert Steering(model, RED).mode == "blend"  # the base class default
    model.prompt_change = "cut"
    assert Steering(model, RED).mode == "cut"
    assert Steering(model, RED, mode="auto").mode == "cut"  # what --on-prompt-change auto passes
    assert Steering(model, RED, mode="blend").mode == "blend"
    with pytest.raises(ConfigError, match="prompt change must be one of cut, blend"):
        Steering(model, RED, mode="fade")


def test_generator_cuts_to_the_new_prompt_at_the_next_chunk():
    model = ColourModel(chunk_seconds=0.01)
    gen = StreamGenerator(model, prompt="a red field", prompt_change="cut", queue_chunks=1).start()
    try:
        deadline = time.monotonic() + 10
        while gen.stats.chunks < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        effective = gen.set_prompt("a blue field")
        chunk = None
        while time.monotonic() < deadline:
            chunk = gen.get_chunk(timeout=0.5)
            if chunk is not None and chunk.index >= effective:
                break
        assert chunk is not None and chunk.index == effective and chunk.prompt == "a blue field"
        assert tuple(chunk.frames[0, 32, 0]) == COLOUR_WORDS["blue"]  # the new colour at once, no blend
        bar = chunk.frames[0, :8].min(axis=-1) == 255  # the moving bar restarts at x = 0: a fresh context
        assert bar[:, 0].all() and not bar[:, 8:].any()
    finally:
        gen.stop()

"""The chunked streaming generator: a VideoModel run chunk by chunk in its own thread into a
bounded queue, steered by prompts.

- A new prompt takes effect at the next chunk boundary; chunks already queued under the old
  prompt are dropped (they are stale), so the change reaches the screen as soon as possible.
- How the new prompt is taken up (`prompt_change`, default: the model's `prompt_change`):
  "blend" keeps the causal context and blends the embedding from old to new over `blend_chunks`
  chunks (linear interpolation of the fixed-shape embeddings), so the scene morphs; "cut" starts a
  fresh causal context at the new prompt (a scene cut), for models whose context outweighs a new
  prompt (the default model: the object's colour follows a new prompt 15% of the time when
  blended, 55% with a cut; `eval-default`'s `prompt_change`, model card).
- The queue is bounded: generation runs at most `queue_chunks` chunks ahead of playback and
  never blocks the caller's event loop.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ConfigError, LTCStreamError
from .models.base import ChunkResult, VideoModel

log = logging.getLogger(__name__)

# one the built-in model draws from the first frame (benchmarks/results/default-model-prompts-cpu.json)
DEFAULT_PROMPT = "a yellow circle moving left on a blue background"


class PromptBlender:
    """Embedding for each next chunk: after `set(new)`, lerp(old, new, k / chunks) for k = 1..chunks,
    where `old` is whatever was being shown (possibly itself a blend)."""

    def __init__(self, embedding: torch.Tensor, chunks: int = 2):
        if chunks < 1:
            raise ConfigError(f"blend_chunks must be >= 1, got {chunks}")
        self.chunks = chunks
        self.previous = self.target = embedding
        self.step = chunks  # fully on the target

    def current(self) -> torch.Tensor:
        return torch.lerp(self.previous, self.target, min(1.0, self.step / self.chunks))

    def set(self, embedding: torch.Tensor) -> None:
        self.previous, self.target, self.step = self.current(), embedding, 0

    def next(self) -> torch.Tensor:
        self.step = min(self.chunks, self.step + 1)
        return self.current()


PROMPT_CHANGES = ("cut", "blend")
PROMPT_CHANGE_OPTIONS = ("auto", *PROMPT_CHANGES)  # what --on-prompt-change accepts; auto: the model's choice


class Steering:
    """The causal state and the prompt embedding for each next chunk of one stream, and how a
    new prompt is taken up: "blend" (same state, embedding blended over `blend_chunks`) or "cut"
    (a fresh state from the next chunk, the new embedding at once). `mode` None or "auto": the
    model's own `prompt_change` ("blend" unless it says otherwise). Not thread-safe: callers lock."""

    def __init__(self, model: VideoModel, embedding: torch.Tensor, *, seed: int = 0, mode: str | None = None,
                 blend_chunks: int = 2):
        if mode in (None, "auto"):
            mode = getattr(model, "prompt_change", "blend")
        if mode not in PROMPT_CHANGES:
            raise ConfigError(f"prompt change must be one of {', '.join(PROMPT_CHANGES)}, got {mode!r}")
        self.model, self.seed, self.mode = model, seed, mode
        self.state = model.new_stream(seed)
        self.blender = PromptBlender(embedding, blend_chunks)
        self.cuts = 0
        self._cut_pending = False

    def set(self, embedding: torch.Tensor) -> None:
        if self.mode == "cut":
            self.blender = PromptBlender(embedding, self.blender.chunks)
            self._cut_pending = True
        else:
            self.blender.set(embedding)

    def restart(self) -> None:
        """A fresh causal context from the next chunk, same prompt (after a fault: a NaN or an
        exception may have left the old context poisoned)."""
        self._cut_pending = True

    def next(self) -> tuple[object, torch.Tensor]:
        """(state, embedding) for the next chunk."""
        if self._cut_pending:
            self.cuts += 1
            self.state = self.model.new_stream(self.seed + self.cuts)  # new noise too: a new scene
            self._cut_pending = False
        return self.state, self.blender.next()


@dataclass
class Chunk:
    index: int  # position in the stream (0, 1, 2, ...)
    frames: np.ndarray  # uint8 [T, H, W, 3]
    prompt: str  # the prompt being blended towards
    prompt_id: int  # increases with every accepted prompt
    prompt_received: float  # perf_counter when that prompt arrived (for prompt-to-screen latency)
    result: ChunkResult
    finished: float = field(default_factory=time.perf_counter)


@dataclass
class GeneratorStats:
    chunks: int = 0
    frames: int = 0
    model_calls: int = 0
    steps: int = 0
    dropped_chunks: int = 0
    errors: int = 0
    seconds: float = 0.0  # generation wall time of the chunks in the recent window
    recent: deque = field(default_factory=lambda: deque(maxlen=16))  # (frames, seconds, calls, steps)

    def record(self, result: ChunkResult, seconds: float) -> None:
        self.chunks += 1
        self.frames += len(result.frames)
        self.model_calls += result.model_calls
        self.steps += result.steps
        self.recent.append((len(result.frames), seconds, result.model_calls, result.steps))

    @property
    def fps(self) -> float:
        """Generation frames per second over recent chunks (0 until the first chunk)."""
        frames = sum(r[0] for r in self.recent)
        seconds = sum(r[1] for r in self.recent)
        return frames / seconds if seconds > 0 else 0.0

    @property
    def calls_per_chunk(self) -> float:
        return sum(r[2] for r in self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def ltc_speedup(self) -> float:
        calls = sum(r[2] for r in self.recent)
        return sum(r[3] for r in self.recent) / calls if calls else 1.0


class StreamGenerator:
    """Runs `model` in a background thread; `get_chunk()` hands out chunks in order."""

    def __init__(self, model: VideoModel, *, prompt: str = DEFAULT_PROMPT, seed: int = 0, ltc: bool = True,
                 queue_chunks: int = 2, blend_chunks: int = 2, threads: int | None = None,
                 prompt_change: str | None = None, max_faults: int = 3):
        if queue_chunks < 1:
            raise ConfigError(f"queue_chunks must be >= 1, got {queue_chunks}")
        self.model = model
        self.ltc = ltc
        self.threads = threads
        self.stats = GeneratorStats()
        self._queue: queue.Queue[Chunk] = queue.Queue(maxsize=queue_chunks)
        self._lock = threading.Lock()
        self._next_index = 0
        self._prompt = prompt
        self._prompt_id = 0
        self._prompt_received = time.perf_counter()
        self._steering = Steering(model, model.encode_prompt(prompt), seed=seed, mode=prompt_change,
                                  blend_chunks=blend_chunks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None  # the last fault's exception type and message
        self.max_faults = max_faults  # consecutive faults after which the stream stops (it is `failed`)
        self.failed = False

    # --- control (any thread) ---------------------------------------------------------------
    def start(self) -> "StreamGenerator":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ltc-generator", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._drain()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def prompt(self) -> str:
        return self._prompt

    def set_prompt(self, text: str) -> int:
        """Steer towards `text` from the next chunk boundary; returns that chunk's index.

        Encodes the prompt in the caller's thread (cached by the model), so an encoder error is
        raised to the caller and the stream keeps its old prompt."""
        embedding = self.model.encode_prompt(text)
        with self._lock:
            self._steering.set(embedding)
            self._prompt = text
            self._prompt_id += 1
            self._prompt_received = time.perf_counter()
            dropped = self._drain()
            self._next_index -= dropped  # dropped chunks are regenerated under the new prompt
            self.stats.dropped_chunks += dropped
            return self._next_index

    def get_chunk(self, timeout: float | None = None) -> Chunk | None:
        try:
            return self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # --- generation thread -----------------------------------------------------------------
    def _drain(self) -> int:
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
                dropped += 1
            except queue.Empty:
                return dropped

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        consecutive_faults = 0
        while not self._stop.is_set():
            with self._lock:
                state, embedding = self._steering.next()
                meta = (self._prompt, self._prompt_id, self._prompt_received)
            started = time.perf_counter()
            try:
                result = self.model.generate_chunk(state, embedding, ltc=self.ltc)
            except Exception as exc:  # a NaN (NonFiniteError) or any model failure: this stream alone
                self.stats.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                consecutive_faults += 1
                if consecutive_faults >= self.max_faults:
                    log.error("stream stopped after %d faults in a row", consecutive_faults, exc_info=True)
                    self.failed = True
                    return
                log.warning("chunk failed (%s); restarting from a clean state", self.last_error,
                            exc_info=not isinstance(exc, LTCStreamError))
                with self._lock:
                    self._steering.restart()
                continue
            consecutive_faults = 0
            finished = time.perf_counter()
            self.stats.record(result, finished - started)
            # Queued under the lock, index given there: a prompt change (which drains the queue
            # under the same lock) can never let a chunk of the old prompt in after it.
            while not self._stop.is_set():
                with self._lock:
                    if meta[1] != self._prompt_id:
                        break  # the prompt changed while this chunk was made or waited: it is stale
                    if not self._queue.full():  # only this thread puts, so there is room below
                        self._queue.put_nowait(Chunk(self._next_index, result.frames, *meta, result=result,
                                                     finished=finished))
                        self._next_index += 1
                        break
                time.sleep(0.01)  # playback takes chunks at the frame rate: waiting for room is the normal case

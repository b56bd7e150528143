"""Make an imported Self-Forcing folder with RANDOM weights at full size, through the same
`ltc-stream import` a user runs, for the GPU benchmark of the imported layout (no network there):

- a base Wan2.1-T2V-1.3B-Diffusers-shaped folder: the transformer's config, a random Wan VAE, a
  one-layer 4096-wide UMT5 text encoder (prompts are encoded once per prompt, never per chunk)
  and a word-level tokenizer;
- `self_forcing_dmd.pt` = {"generator_ema": "model." + original Wan layout} of a random 1.3B
  transformer, and a random TAEHV `taew2_1.pth` in the published key layout;
- `ltc-stream import self-forcing ... --taehv ...` -> OUT/self-forcing.

Every figure measured on the result is "random weights": throughput only.
    python3 benchmarks/gpu/imported_wan.py OUT [--tiny]     (--tiny: toy widths, a CPU dry run)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the tests' inverse of diffusers' key map and TAEHV's key table

from real_model_fixtures import diffusers_to_original, taehv_published_state  # noqa: E402


def tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "</s>", "a", "red", "ball", "rolls", "to", "the", "left", "cat", "sky"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", model_max_length=max_length)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="toy widths (a CPU dry run of this script)")
    args = parser.parse_args()
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ltc_stream.models.adapters import wan_1_3b_config
    from ltc_stream.models.importers import import_checkpoint

    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = wan_1_3b_config()
    vae_args = {}
    if args.tiny:
        config.update(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=64, freq_dim=16)
        vae_args = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    base = args.out / "base"
    (base / "transformer").mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        transformer = WanTransformer3DModel(**config).to(torch.bfloat16)
    transformer.save_config(base / "transformer")
    AutoencoderKLWan(**vae_args).save_pretrained(base / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=12, d_model=config["text_dim"], d_kv=64, d_ff=64, num_layers=1, num_heads=2,
                                relative_attention_num_buckets=8)).save_pretrained(base / "text_encoder")
    tokenizer(512).save_pretrained(base / "tokenizer")
    (base / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"], "scheduler": ["diffusers", "UniPCMultistepScheduler"]}))
    original = {"model." + k: v.cpu() for k, v in diffusers_to_original(transformer.state_dict()).items()}
    del transformer
    torch.save({"generator_ema": original}, args.out / "self_forcing_dmd.pt")
    torch.save(taehv_published_state(), args.out / "taew2_1.pth")
    print(f"[imported-wan] random base and checkpoint written in {time.perf_counter() - t0:.1f} s", flush=True)
    import_checkpoint("self-forcing", args.out / "self_forcing_dmd.pt", base, args.out / "self-forcing",
                      taehv=args.out / "taew2_1.pth", overwrite=True)
    (args.out / "self_forcing_dmd.pt").unlink()  # 2.8 GB no longer needed
    print(f"[imported-wan] {args.out / 'self-forcing'} ready in {time.perf_counter() - t0:.1f} s (RANDOM weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

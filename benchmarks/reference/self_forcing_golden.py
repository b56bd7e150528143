"""Golden tensors from the Self-Forcing reference (guandeh17/Self-Forcing), run on CPU on tiny
random weights, for `tests/test_self_forcing_reference.py`.

    python benchmarks/reference/self_forcing_golden.py --reference /tmp/self-forcing \
        --out tests/fixtures/self_forcing_golden.safetensors

`--reference` is a git checkout of the reference (the fixture was made from commit 33593df:
`git clone https://github.com/guandeh17/Self-Forcing /tmp/self-forcing && git -C /tmp/self-forcing
checkout 33593df`); it needs `pip install einops ftfy` (the reference imports them; the project does
not). Its code is imported from there,
never copied into this repository, and none of its files is edited. What this script works around
at import time (what a CPU-only environment lacks): `wan/__init__.py` and `pipeline/__init__.py`
are skipped (bare packages: they import torchvision and every pipeline), `torch.cuda.current_device`
returns 0 while importing (`wan/modules/t5.py`, `demo_utils/memory.py` ask at import), and the
reference's two attention entry points (`wan.modules.model.flash_attention`,
`wan.modules.causal_model.attention`) become scaled-dot-product attention in the inputs' dtype
(its own fallback casts to bfloat16).

It then drives the reference's own `CausalInferencePipeline.inference` (its `WanDiffusionWrapper`
and its `CausalWanModel` with the tiny config below) exactly as `inference.py` does for
`configs/self_forcing_dmd.yaml`: timesteps [1000, 750, 500, 250] warped through the shift-5
schedule, 3 latent frames per block, context noise 0, no guidance. The text encoder and VAE are
stubs (the prompt embedding is given; the latents are returned before decoding), the KV caches are
pre-built at the tiny size (the pipeline hard-codes the 1.3B model's), and the re-noise draws
(`torch.randn_like` in the pipeline) are taken, in order, from tensors drawn here, so the project
can be fed the same ones.

Written, in fp32 (safetensors; the configuration and this command in its metadata and in a
`.json` sidecar):
- `model.*`: the tiny weights in the original Wan layout with the `model.` prefix, as
  `self_forcing_dmd.pt` stores its `generator_ema` (head.head.weight redrawn: `init_weights` zeroes it);
- `prompt_embeds` [1, text_len, text_dim] (padding rows zeroed, as the umT5 wrapper does);
- `initial_noise` [1, 3 * blocks, 16, h, w] (the reference's frame-major layout);
- `renoise` [blocks, steps - 1, 1, 3, 16, h, w]: the draws after steps 0 .. steps - 2 of each block;
- `latents` [1, 3 * blocks, 16, h, w]: the reference's output with its default cache (every frame
  kept: 21 frames is what it was trained on), `BLOCKS` blocks;
- `latents_window` the same run with the reference's local attention (`local_attn_size` 12,
  `sink_size` 3: LongLive's window), what a bounded cache should match after it fills.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import shlex
import sys
import types
from pathlib import Path

import torch

# tiny Wan2.1 T2V: 2 heads of 12 (dim 24), 2 layers; latents 16 x 4 x 8 (patch 1x2x2: 8 tokens/frame)
CONFIG = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=24, ffn_dim=32, freq_dim=16,
              text_dim=32, out_dim=16, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)
LATENT_HW = (4, 8)
FRAMES_PER_BLOCK = 3
BLOCKS = 7  # 21 latent frames: the length the released model was trained on (its cache holds them all)
PROMPT_TOKENS = 7  # rows of the embedding that are not padding
DENOISING_STEPS = [1000, 750, 500, 250]
SHIFT = 5.0
WINDOW = dict(local_attn_size=12, sink_size=3)
SEED = 20261205


# ---------------------------------------------------------------------------------------------
# Importing the reference on CPU without editing it
# ---------------------------------------------------------------------------------------------
def _bare_package(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def _sdpa(q, k, v, *args, **kwargs):
    """[B, L, H, D] attention in the inputs' dtype, no padding mask (the reference's own CPU
    fallback also drops `k_lens`; the tiny run has none to apply)."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


def import_reference(root: Path):
    if not (root / "pipeline" / "causal_inference.py").is_file():
        raise SystemExit(f"{root} is not a Self-Forcing checkout (no pipeline/causal_inference.py)")
    sys.path.insert(0, str(root))
    _bare_package("wan", root / "wan")
    _bare_package("pipeline", root / "pipeline")
    saved = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        wan_model = importlib.import_module("wan.modules.model")
        causal_model = importlib.import_module("wan.modules.causal_model")
        wan_wrapper = importlib.import_module("utils.wan_wrapper")
        causal_inference = importlib.import_module("pipeline.causal_inference")
    finally:
        torch.cuda.current_device = saved
    wan_model.flash_attention = _sdpa
    causal_model.attention = _sdpa
    return causal_model, wan_wrapper, causal_inference


# ---------------------------------------------------------------------------------------------
# Driving its pipeline
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fed_randn_like(draws: list[torch.Tensor]):
    """The pipeline's `torch.randn_like` returns the given tensors in order (shapes checked)."""
    original = torch.randn_like
    queue = list(draws)

    def randn_like(t, *args, **kwargs):
        if not queue:
            raise RuntimeError("the reference drew more re-noise tensors than were prepared")
        nxt = queue.pop(0)
        if nxt.shape != t.shape:
            raise RuntimeError(f"re-noise shape {tuple(t.shape)} drawn, {tuple(nxt.shape)} prepared")
        return nxt.to(t.dtype).clone()

    torch.randn_like = randn_like
    try:
        yield
    finally:
        torch.randn_like = original
    if queue:
        raise RuntimeError(f"{len(queue)} prepared re-noise tensors were not drawn")


def tiny_state_dict(causal_model) -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    model = causal_model.CausalWanModel(**CONFIG)
    torch.nn.init.normal_(model.head.head.weight, std=0.05)  # init_weights() zeroes it: the output would be 0
    # small random modulations and biases, so no path of the conversion is tested on zeros or ones
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation") or name.endswith(".bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def run_reference(modules, state: dict, prompt_embeds: torch.Tensor, initial_noise: torch.Tensor,
                  renoise: torch.Tensor, window: dict | None = None) -> torch.Tensor:
    causal_model, wan_wrapper, causal_inference = modules
    cfg = dict(CONFIG, **(window or {}))
    model = causal_model.CausalWanModel(**cfg)
    model.load_state_dict(state, strict=True)
    model.eval()

    original_loader = wan_wrapper.CausalWanModel.from_pretrained
    wan_wrapper.CausalWanModel.from_pretrained = classmethod(lambda cls, *a, **k: model)
    try:
        generator = wan_wrapper.WanDiffusionWrapper(timestep_shift=SHIFT, is_causal=True, **(window or {}))
    finally:
        wan_wrapper.CausalWanModel.from_pretrained = original_loader

    class TextStub(torch.nn.Module):
        def forward(self, text_prompts):
            return {"prompt_embeds": prompt_embeds}

    class VAEStub(torch.nn.Module):
        def decode_to_pixel(self, latent, use_cache=False):
            return latent

    args = types.SimpleNamespace(denoising_step_list=DENOISING_STEPS, warp_denoising_step=True,
                                 num_frame_per_block=FRAMES_PER_BLOCK, independent_first_frame=False,
                                 context_noise=0)
    pipe = causal_inference.CausalInferencePipeline(args, device="cpu", generator=generator,
                                                    text_encoder=TextStub(), vae=VAEStub())
    # the pipeline's sizes are the 1.3B model's: set the tiny ones and pre-build its caches
    h, w = LATENT_HW
    tokens_per_frame = (h // 2) * (w // 2)
    heads, head_dim = CONFIG["num_heads"], CONFIG["dim"] // CONFIG["num_heads"]
    pipe.num_transformer_blocks = CONFIG["num_layers"]
    pipe.frame_seq_length = tokens_per_frame
    cache_frames = window["local_attn_size"] if window else 21  # 32760 = 21 x 1560 tokens in the reference
    for block in model.blocks:
        block.self_attn.max_attention_size = cache_frames * tokens_per_frame
    pipe.kv_cache1 = [{"k": torch.zeros(1, cache_frames * tokens_per_frame, heads, head_dim),
                       "v": torch.zeros(1, cache_frames * tokens_per_frame, heads, head_dim),
                       "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
                      for _ in range(CONFIG["num_layers"])]
    pipe.crossattn_cache = [{"k": None, "v": None, "is_init": False} for _ in range(CONFIG["num_layers"])]
    draws = [renoise[b, i].flatten(0, 1) for b in range(renoise.shape[0]) for i in range(renoise.shape[1])]
    with torch.no_grad(), fed_randn_like(draws), contextlib.redirect_stdout(sys.stderr):
        _, latents = pipe.inference(noise=initial_noise, text_prompts=["tiny"], return_latents=True)
    return latents


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="a checkout of guandeh17/Self-Forcing")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors fixture to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # reproducible reductions
    modules = import_reference(args.reference.resolve())

    state = tiny_state_dict(modules[0])
    gen = torch.Generator().manual_seed(SEED + 1)
    h, w = LATENT_HW
    prompt = torch.zeros(1, CONFIG["text_len"], CONFIG["text_dim"])
    prompt[:, :PROMPT_TOKENS] = torch.randn(1, PROMPT_TOKENS, CONFIG["text_dim"], generator=gen)
    frames = FRAMES_PER_BLOCK * BLOCKS
    initial_noise = torch.randn(1, frames, CONFIG["in_dim"], h, w, generator=gen)
    renoise = torch.randn(BLOCKS, len(DENOISING_STEPS) - 1, 1, FRAMES_PER_BLOCK, CONFIG["in_dim"], h, w, generator=gen)

    latents = run_reference(modules, state, prompt, initial_noise, renoise)
    again = run_reference(modules, state, prompt, initial_noise, renoise)
    if not torch.equal(latents, again):
        raise SystemExit("the reference is not deterministic on this machine: not writing a golden fixture")
    latents_window = run_reference(modules, state, prompt, initial_noise, renoise, window=WINDOW)

    from safetensors.torch import save_file

    commit = _reference_commit(args.reference)
    meta = {
        "command": shlex.join(["python", "benchmarks/reference/self_forcing_golden.py", "--reference",
                               str(args.reference), "--out", str(args.out)]),
        "reference": "https://github.com/guandeh17/Self-Forcing", "reference_commit": commit,
        "config": CONFIG, "latent_hw": list(LATENT_HW), "frames_per_block": FRAMES_PER_BLOCK, "blocks": BLOCKS,
        "denoising_steps": DENOISING_STEPS, "warp_denoising_step": True, "timestep_shift": SHIFT,
        "context_noise": 0, "window": WINDOW, "prompt_tokens": PROMPT_TOKENS, "seed": SEED,
        "torch": torch.__version__,
        "tensors": {
            "model.*": "tiny weights, original Wan layout with the model. prefix (self_forcing_dmd.pt generator_ema)",
            "prompt_embeds": "[1, text_len, text_dim], rows from prompt_tokens on are padding (zero)",
            "initial_noise": "[1, frames, C, h, w] (reference layout: frames before channels)",
            "renoise": "[blocks, steps - 1, 1, 3, C, h, w]: fresh noise after steps 0 .. steps - 2 of each block",
            "latents": "[1, frames, C, h, w]: the reference's output, default cache (all 21 frames kept)",
            "latents_window": "[1, frames, C, h, w]: the same with local_attn_size 12, sink_size 3",
        },
    }
    tensors = {f"model.{k}": v for k, v in state.items()}
    tensors.update(prompt_embeds=prompt, initial_noise=initial_noise, renoise=renoise, latents=latents.contiguous(),
                   latents_window=latents_window.contiguous())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"golden": json.dumps(meta)})
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    size = args.out.stat().st_size
    print(json.dumps({"out": str(args.out), "bytes": size, "weights": len(state),
                      "latents_rms": round(float(latents.pow(2).mean().sqrt()), 4),
                      "window_vs_full_per_block": [round(_rel(latents_window, latents, b), 6) for b in range(BLOCKS)]}))
    return 0


def _rel(a: torch.Tensor, b: torch.Tensor, block: int) -> float:
    s = slice(block * FRAMES_PER_BLOCK, (block + 1) * FRAMES_PER_BLOCK)
    return float((a[:, s] - b[:, s]).norm() / b[:, s].norm())


def _reference_commit(root: Path) -> str | None:
    """The checkout's commit where it is a git work tree (an archive has none: pass it in the path)."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())

"""Tiny random-initialised diffusers pipelines (Wan, AnimateDiff) saved as local folders.

Built inside the tests, never downloaded: a word-level tokenizer from `tokenizers`, one-layer
text encoders, and the real model classes at toy widths.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "</s>", "a", "red", "blue", "green", "ball", "square", "cat", "sky", "over", "the",
         "moves", "left", "right", "<|startoftext|>", "<|endoftext|>"]


def tiny_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   model_max_length=max_length)


def tiny_wan_parts(seed: int = 0, layers: int = 2):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32,
                                        num_layers=layers, rope_max_seq_len=64).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    return transformer, vae


def save_tiny_wan(folder: Path, with_tiny_decoder: bool = False) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    transformer, vae = tiny_wan_parts()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8)).eval()
    pipe = WanPipeline(tokenizer=tiny_tokenizer(16), text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.save_pretrained(folder)
    if with_tiny_decoder:
        (folder / "taehv").mkdir()
        torch.save(taehv_published_state(), folder / "taehv" / "taew2_1.pth")
    return folder


# TAEHV's published decoder for Wan 2.1 (taew2_1.pth), written out from its architecture: index ->
# (kind, in, out). MemBlock: conv.0 (2n->n, bias), conv.2, conv.4 (n->n, bias); no skip (equal widths).
TAEHV_DECODER = {1: ("conv", 16, 256), 3: ("mem", 256), 4: ("mem", 256), 5: ("mem", 256), 7: ("grow", 256, 1),
                 8: ("conv_nobias", 256, 128), 9: ("mem", 128), 10: ("mem", 128), 11: ("mem", 128),
                 13: ("grow", 128, 2), 14: ("conv_nobias", 128, 64), 15: ("mem", 64), 16: ("mem", 64),
                 17: ("mem", 64), 19: ("grow", 64, 2), 20: ("conv_nobias", 64, 64), 22: ("conv", 64, 3)}


def taehv_published_state(seed: int = 0, stored_grow_stride: int = 2) -> dict[str, torch.Tensor]:
    """A random state dict in taew2_1.pth's key names and shapes (two encoder keys too, which a
    decoder ignores). Some published files store the stride-1 TGrow (decoder.7) at stride 2."""
    gen = torch.Generator().manual_seed(seed)

    def w(*shape, fan_in):
        return torch.randn(*shape, generator=gen) * (2.0 / fan_in) ** 0.5

    state = {"encoder.0.weight": w(64, 3, 3, 3, fan_in=27), "encoder.0.bias": torch.zeros(64)}
    for i, spec in TAEHV_DECODER.items():
        if spec[0] in ("conv", "conv_nobias"):
            _, n_in, n_out = spec
            state[f"decoder.{i}.weight"] = w(n_out, n_in, 3, 3, fan_in=9 * n_in)
            if spec[0] == "conv":
                state[f"decoder.{i}.bias"] = 0.1 * torch.randn(n_out, generator=gen)
            if i == 22:  # RGB around mid-grey, mostly inside [0, 1], so the final clamp hides little
                state[f"decoder.{i}.weight"] *= 0.03
                state[f"decoder.{i}.bias"] += 0.5
        elif spec[0] == "mem":
            n = spec[1]
            for j, n_in in ((0, 2 * n), (2, n), (4, n)):
                state[f"decoder.{i}.conv.{j}.weight"] = w(n, n_in, 3, 3, fan_in=9 * n_in) * (0.5 if j == 4 else 1.0)
                state[f"decoder.{i}.conv.{j}.bias"] = 0.01 * torch.randn(n, generator=gen)
        else:
            _, n, stride = spec
            rows = n * max(stride, stored_grow_stride if stride == 1 else stride)
            state[f"decoder.{i}.conv.weight"] = w(rows, n, 1, 1, fan_in=n)
    return state


# diffusers' WanTransformer3DModel names -> the original Wan layout, the inverse of diffusers'
# convert_wan_transformer_to_diffusers (tests check the inversion with that converter)
_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
]


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "scale_shift_table":
            key = "head.modulation"
        elif key.endswith(".scale_shift_table"):
            key = key[: -len("scale_shift_table")] + "modulation"
        for new, old in _TO_ORIGINAL:
            key = key.replace(new, old)
        out[key] = value
    return out


def _tiny_sd_unet():
    """SD1.5's UNet at toy widths (AnimateDiff's and the Lightning base's); each part draws from the
    global generator, so the callers keep their draw order."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, sample_size=8)


def _tiny_sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 8], latent_channels=4, norm_num_groups=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def _tiny_sd_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        eos_token_id=2, pad_token_id=0, bos_token_id=2))


def save_tiny_animatediff(folder: Path) -> Path:
    from diffusers import AnimateDiffPipeline, EulerDiscreteScheduler, MotionAdapter

    torch.manual_seed(0)
    unet = _tiny_sd_unet()
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    vae = _tiny_sd_vae()
    text_encoder = _tiny_sd_text_encoder()
    scheduler = EulerDiscreteScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing="trailing")
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(77), unet=unet,
                               motion_adapter=adapter, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_sd15(folder: Path) -> Path:
    """A Stable Diffusion 1.5-layout pipeline folder at toy widths (the base AnimateDiff-Lightning's
    motion module is imported onto)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.manual_seed(1)
    unet = _tiny_sd_unet()
    vae = _tiny_sd_vae()
    text_encoder = _tiny_sd_text_encoder()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(77), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder

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
    from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    transformer, vae = tiny_wan_parts()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8)).eval()
    pipe = WanPipeline(tokenizer=tiny_tokenizer(16), text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.save_pretrained(folder)
    if with_tiny_decoder:
        AutoencoderTiny(latent_channels=16, out_channels=12, encoder_block_out_channels=(8, 8, 8, 8),
                        decoder_block_out_channels=(8, 8, 8, 8)).save_pretrained(folder / "tiny_vae")
    return folder


def save_tiny_animatediff(folder: Path) -> Path:
    from diffusers import (AnimateDiffPipeline, AutoencoderKL, EulerDiscreteScheduler, MotionAdapter,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, sample_size=8)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    vae = AutoencoderKL(block_out_channels=[8, 8], latent_channels=4, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                                eos_token_id=2, pad_token_id=0, bos_token_id=2))
    scheduler = EulerDiscreteScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing="trailing")
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(77), unet=unet,
                               motion_adapter=adapter, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder

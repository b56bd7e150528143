"""The colour reader of reader guidance (`..reader`), trained for a finished folder's denoiser."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ....errors import ConfigError
from ..model import LTC_FILE, READER_FILE, READER_GUIDANCE, READER_SEAM_ANCHOR, calibrate_command
from ..networks import Denoiser
from ..reader import ColourReader, cell_labels, reader_accuracy, reader_loss
from ..world import object_coverage
from .config import cosine_lr, progress, student_sigmas
from .data import embed_captions, encode_frames, render_training_clips, split_clip
from .folder import finish_folder_stage, load_into, trained_folder
from .teacher import denoiser_velocity


READER_STEPS_BATCH = 32


READER_LR = 2e-3


READER_HELD_OUT = 0.1  # share of the clips kept out of the reader's training to measure it


@torch.no_grad()
def reader_inputs(denoiser: Denoiser, chunk: torch.Tensor, context: torch.Tensor, tokens: torch.Tensor,
                  sigmas: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """What the reader sees at sampling time: the denoiser's x0 estimates of the true chunks [N, C, T,
    h, w] noised to one of `sigmas` (drawn per clip), half of them with the clip's context; `copies`
    draws per clip, [copies * N, ...], copy-major."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        for i in progress(range(0, len(chunk), 64), (len(chunk) + 63) // 64, "reader inputs (denoiser x0 estimates)"):
            x0 = chunk[i:i + 64]
            s = sigmas[torch.randint(len(sigmas), (len(x0),), generator=gen)].view(-1, 1, 1, 1, 1)
            x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
            keep = torch.rand(len(x0), generator=gen) >= 0.5
            v = denoiser_velocity(denoiser, x, s.flatten(), tokens[i:i + 64], context[i:i + 64], keep)
            out.append(x - s * v)
    return torch.cat(out)


def train_reader(reader, inputs: torch.Tensor, colour: torch.Tensor, obj: torch.Tensor, steps: int, seed: int,
                 log: list) -> None:
    """`steps` AdamW steps (cosine schedule) of `reader.reader_loss` on random rows."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(reader.parameters(), lr=READER_LR, weight_decay=1e-2)
    for step in progress(range(steps), steps, "reader"):
        cosine_lr(opt, step, steps, READER_LR, warmup=100)
        idx = torch.randint(len(inputs), (READER_STEPS_BATCH,), generator=gen)
        loss = reader_loss(reader, inputs[idx], colour[idx], obj[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(("reader", step, loss.item()))


def train_reader_folder(out: Path, steps: int, threads: int = 2, guidance: float | None = None) -> dict:
    """Train the colour reader of reader guidance (`reader.py`) for a trained folder: on the clips
    the folder was trained on (its own settings), their latents and its denoiser's x0 estimates of
    them (student, else teacher), labelled from the scenes' ground truth. Writes
    `reader.safetensors`, records the run in ltc_model.json (`reader`) and turns the guidance on
    there (`sampling.reader_guidance`, `guidance` or READER_GUIDANCE; the seam anchor raised to at
    least READER_SEAM_ANCHOR); the network weights are left as they are."""
    from safetensors.torch import save_file


    meta, net, cfg, ae = trained_folder(out, "--train-reader", threads)
    if not net.attribute_classes:
        raise ConfigError("--train-reader: reader guidance takes the prompt's colours from the attribute pooling; "
                          f"{out} was trained without --text-attributes")
    weights = out / "student.safetensors"
    if not weights.is_file():
        weights = out / "teacher.safetensors"
    if not weights.is_file():
        raise ConfigError(f"--train-reader: {out} has no denoiser weights")
    t0 = time.time()
    denoiser = Denoiser(net)
    load_into(denoiser, weights)
    denoiser.eval().requires_grad_(False)
    ae.eval().requires_grad_(False)
    frames, clips = render_training_clips(cfg, net)
    colour = torch.empty(cfg.clips, net.frames_per_chunk, net.height // 8, net.width // 8, dtype=torch.long)
    obj = torch.empty(colour.shape)
    for i, (scene, start) in enumerate(clips):
        coverage = object_coverage(scene, start, frames.shape[1], net.height, net.width)[net.context_frames:]
        colour[i], obj[i] = cell_labels(coverage, scene)
    tokens = embed_captions([scene.caption for scene, _ in clips], net)
    with torch.no_grad():
        latents = encode_frames(ae, frames) / ae.latent_scale
    context, chunk = split_clip(latents, net)
    copies = 2
    estimates = reader_inputs(denoiser, chunk, context, tokens, student_sigmas(cfg.student_steps)[:-1], copies, cfg.seed + 9)
    train_rows = int(round(cfg.clips * (1 - READER_HELD_OUT)))
    pick = lambda t: torch.cat([t[:train_rows]] * (copies + 1))  # noqa: E731  (clean latents, then each copy)
    inputs = torch.cat([chunk[:train_rows]] + [estimates[k * cfg.clips:k * cfg.clips + train_rows] for k in range(copies)])
    torch.manual_seed(cfg.seed)
    reader = ColourReader(net.latent_channels)
    log: list = []
    train_reader(reader, inputs, pick(colour), pick(obj), steps, cfg.seed + 10, log)
    reader.eval()
    held = slice(train_rows, cfg.clips)
    accuracy = {"clean": reader_accuracy(reader, chunk[held], colour[held], obj[held]),
                "denoiser_estimates": reader_accuracy(reader, estimates[held], colour[held], obj[held])}
    save_file({k: v.contiguous() for k, v in reader.state_dict().items()}, str(out / READER_FILE))
    record = meta["reader"] = {"steps": steps, "batch": READER_STEPS_BATCH, "lr": READER_LR, "from": weights.name,
                               "held_out_clips": cfg.clips - train_rows, "held_out_accuracy": accuracy,
                               "seconds": round(time.time() - t0, 1)}
    sampling = meta.setdefault("sampling", {})
    sampling["reader_guidance"] = READER_GUIDANCE if guidance is None else guidance
    sampling["seam_anchor"] = max(float(sampling.get("seam_anchor", 0.0)), READER_SEAM_ANCHOR)
    finish_folder_stage(out, meta, "reader", record, log)
    est = accuracy["denoiser_estimates"]
    print(f"[train-default] reader trained {steps} steps in {record['seconds']:.0f} s; on held-out clips' "
          f"x0 estimates: background colour {est['background_colour']:.1%}, object colour {est['object_colour']:.1%}, "
          f"object {est['object']:.1%}; sampling.reader_guidance = {sampling['reader_guidance']:g}, "
          f"sampling.seam_anchor = {sampling['seam_anchor']:g}")
    if (out / LTC_FILE).is_file():  # its key names the reader and the guidance: no longer this folder's
        print(f"[train-default] {out / LTC_FILE} was calibrated with the previous reader: LTC stays off until "
              f"'{calibrate_command(out)}' calibrates it again")
    return record

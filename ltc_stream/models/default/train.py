"""`ltc-stream train-default`: train and distil the built-in default model, reproducibly by seed.

Stages (each checkpointed into the output folder as it finishes):
1. data      render clips of the procedural world, caption them with paraphrases, embed captions
2. ae        per-frame 8x autoencoder (L1 + MSE on pixels)
3. teacher   flow-matching denoiser, causal on the previous chunk's last latent frames
4. distil    trajectory distillation to `--student-steps` Euler steps: the student, initialised from
             the teacher, learns at each of its own sigmas the x0 whose Euler step lands where the
             teacher's fine-step ODE solution lands (deterministic targets, no adversarial loss)
Then loss curves are written as PNG and `ltc_model.json` describes the folder.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from .model import READER_FILE, calibrate_command, train_reader_command
from .networks import Autoencoder, Denoiser, NetConfig
from .training.average import average_folders
from .training.attributes import attribute_accuracy, fit_velocity_head, freeze_attributes, train_attributes
from .training.autoencoder import train_autoencoder
from .training.config import CONTEXT_SHIFT_LEVELS, DEFAULT_OUTPUT, TrainConfig
from .training.data import encode_clips, held_out_attributes, make_dataset, shifted_context_latents
from .training.distil import teacher_trajectories, train_student
from .training.folder import (FOLDER_STAGES, init_teacher_from, load_into, load_loss_log, resumable_stage,
                              same_autoencoder, save_folder, save_loss_curves, saved_teacher_steps)
from .training.reader import train_reader_folder
from .training.teacher import train_teacher
from .world import ATTRIBUTES


def train(cfg: TrainConfig, net: NetConfig, out: Path, resume: bool = False, init_from: Path | None = None,
          device: str | torch.device = "cpu") -> dict:
    from ...device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    log: list = []
    done = resumable_stage(out, cfg, net) if resume else None
    ae_folder = out
    if init_from is not None and done is None:
        if not (init_from / "teacher.safetensors").is_file():
            raise ConfigError(f"--init-from {init_from}: no teacher.safetensors there")
        meta = json.loads((init_from / "ltc_model.json").read_text())
        if not same_autoencoder(meta, cfg, net) or meta.get("stage") not in FOLDER_STAGES:
            raise ConfigError(f"--init-from {init_from}: its autoencoder was trained with other data or settings")
        done, ae_folder = "ae", init_from
    print(f"[train-default] output {out}; seed {cfg.seed}; {cfg.clips} clips of {net.height}x{net.width}; on {dev}"
          + (f"; reusing the autoencoder of {init_from}" if ae_folder != out
             else f"; resuming after stage '{done}'" if done else ""))
    if resume and done is None:
        print("[train-default] nothing to resume (no folder, or it was trained with other settings): training from scratch")
    start = saved_teacher_steps(out) if done == "teacher-partial" else 0
    if start:
        print(f"[train-default] the teacher in {out} has {start} steps: training it on to {cfg.teacher_steps}")
    if done is not None:
        log.extend(load_loss_log(ae_folder, ("ae", "teacher", "attributes") if done != "ae" else ("ae",)))
        if not log and (out / "loss_curves.png").is_file():  # folder from before the log was saved
            (out / "loss_curves.png").replace(out / "loss_curves_ae_teacher.png")
    data = make_dataset(cfg, net)
    for key in ("tokens", "attributes", "velocities", "masks"):  # the rendered frames stay on the CPU
        data[key] = data[key].to(dev)
    ae = Autoencoder(net).to(dev)
    if done is None:
        train_autoencoder(ae, data, cfg, log)
        latents = encode_clips(ae.eval(), data)
        save_folder(out, net, ae, None, None, cfg, "ae")
    else:
        load_into(ae, ae_folder / "autoencoder.safetensors")
        scale = float(ae.latent_scale)
        latents = encode_clips(ae.eval(), data)  # deterministic: same data, same weights
        ae.latent_scale.fill_(scale)
    print(f"[train-default] autoencoder done at {time.time() - t0:.0f} s; latent scale {float(ae.latent_scale):.3f}")

    shifted = shifted_context_latents(ae.eval(), data, net, cfg) if cfg.context_shift else None
    chunk_masks = data["masks"][:, net.context_frames:]  # the chunk frames' object masks [N, T, h, w], indexed like latents
    teacher = Denoiser(net).to(dev)
    if done in ("teacher", "distilled"):
        load_into(teacher, out / "teacher.safetensors")
        teacher.eval()
    else:
        new_attributes = bool(net.attribute_classes) and not start
        if start:
            load_into(teacher, out / "teacher.safetensors")
            log[:] = [r for r in log if r[0] != "teacher" or r[1] < start]
        elif init_from is not None:
            copied, new = init_teacher_from(teacher, init_from)
            print(f"[train-default] teacher initialised from {init_from}: {copied} tensors copied, {len(new)} new")
            new_attributes = new_attributes and any(k.startswith(("attr_text.", "attr_head.")) for k in new)
        if new_attributes:
            log[:] = [r for r in log if r[0] != "attributes"]
            train_attributes(teacher, data["tokens"], data["attributes"], cfg, log)
        if net.text_velocity and not start:
            rms = fit_velocity_head(teacher, data["tokens"], data["velocities"])
            print(f"[train-default] velocity head fitted to {len(data['tokens'])} captions: rms error {rms:.4f} of the frame per frame")
        teacher = train_teacher(freeze_attributes(teacher), latents, data["tokens"], net, cfg, log, start=start,
                                warm=init_from is not None, masks=chunk_masks, shifted=shifted)
        save_folder(out, net, ae, teacher, None, cfg, "teacher")
        save_loss_curves(log, out / "loss_curves.png")
    print(f"[train-default] teacher done at {time.time() - t0:.0f} s")

    records = teacher_trajectories(teacher, latents, data["tokens"], net, cfg, shifted)
    student = train_student(freeze_attributes(copy.deepcopy(teacher).requires_grad_(True)), records, data["tokens"], cfg,
                            log, masks=chunk_masks)
    elapsed = time.time() - t0
    summary = {
        "seconds": round(elapsed, 1),
        "resumed_after": None if init_from is not None else done,
        "initialised_from": str(init_from) if init_from is not None else None,
        "teacher_trained_on_from_step": start or None,
        "final_loss": {s: float(np.mean([r[2] for r in log if r[0] == s][-50:])) for s in ("ae", "teacher", "distil")
                       if any(r[0] == s for r in log)},
    }
    if net.attribute_classes:
        summary["attribute_accuracy_held_out"] = attribute_accuracy(
            student, *(t.to(dev) for t in held_out_attributes(500, net)))
        print(f"[train-default] text adapter on 500 held-out captions: {summary['attribute_accuracy_held_out']}")
    save_folder(out, net, ae, teacher, student, cfg, "distilled", {"training": summary})
    save_loss_curves(log, out / "loss_curves.png")
    print(f"[train-default] done in {elapsed:.0f} s: {json.dumps(summary['final_loss'])}")
    return summary


# NetConfig switches with a flag of the same name: off by default, the folder's own with --resume
NETWORK_SWITCHES = {
    "motion_conv": "a depthwise 3x3x3 convolution beside each denoiser block's temporal one (things can move "
                   "from frame to frame)",
    "adaptive_output": "FiLM on the denoiser's output norm, so the prompt can set a colour over the whole picture",
    "text_velocity": "the motion the prompt names (a velocity read from the caption by the attribute pooling): every block "
                     "also sees its neighbouring frames moved along it, and the context moved to where the chunk is "
                     "(needs --text-attributes)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write (default: the packaged weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests (seconds)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels (multiple of 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    parser.add_argument("--device", default="auto",
                        help="where the networks train: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N. The data "
                             "and every random draw are made on the CPU, so a seed draws the same batches anywhere "
                             "(--train-reader runs on the CPU)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the autoencoder and teacher already in --output when they were trained with the same settings; "
                             "a teacher trained for fewer --teacher-steps is trained on from where it stopped")
    for name in ("clips", "ae_steps", "teacher_steps", "distil_trajectories", "distil_steps", "student_steps"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    parser.add_argument("--init-from", type=Path, default=None,
                        help="reuse this folder's autoencoder and start the teacher from its weights where names and shapes "
                             "match (to grow the network, e.g. with --self-attn)")
    parser.add_argument("--self-attn", action=argparse.BooleanOptionalAction, default=True,
                        help="self-attention over the chunk's half-resolution positions in the denoiser (default: on)")
    for key, text in NETWORK_SWITCHES.items():
        parser.add_argument("--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                            help=text + " (default: off, or the folder's with --resume)")
    parser.add_argument("--cross-attn-drop", type=float, default=None,
                        help="share of teacher samples whose cross-attention sees the empty prompt (default 0)")
    parser.add_argument("--text-attributes", action=argparse.BooleanOptionalAction, default=None,
                        help="a second text pooling, trained first to classify the scene's attributes from the caption "
                             "(auxiliary loss, then frozen), feeds the denoiser's condition (default: off, or the folder's "
                             "with --resume)")
    parser.add_argument("--context-drop", type=float, default=None,
                        help="share of training samples without the previous chunk's latents (default 0.5)")
    parser.add_argument("--context-shift", type=float, default=None,
                        help="share of samples with context whose context frames get a random colour offset (up to "
                             f"{CONTEXT_SHIFT_LEVELS:g} levels per channel) while the chunk keeps the true colours, so the "
                             "model takes colours from the prompt rather than copying a drifted context (default 0)")
    parser.add_argument("--object-weight", type=float, default=None,
                        help="extra loss weight on latent pixels the objects cover (default 4; 0: plain MSE)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale distilled into the student (default 5.0)")
    parser.add_argument("--average", nargs=2, metavar=("FIRST", "SECOND"), default=None,
                        help="only write --output as the weight average of two trained folders' students and teachers "
                             "(same network and autoencoder; FIRST's reader and settings; the packaged weights are such "
                             "averages, model card), then stop")
    parser.add_argument("--average-weight", type=float, default=0.5,
                        help="with --average: SECOND's share (default 0.5: the plain mean)")
    parser.add_argument("--train-reader", type=int, default=None, metavar="STEPS",
                        help="only train the colour reader of reader guidance for the trained model in --output for STEPS "
                             "steps (on its training clips and its denoiser's x0 estimates of them; about 1000 steps, "
                             "~10 min on 2 CPU cores) and turn the guidance on in its ltc_model.json, then stop")
    parser.add_argument("--with-reader", type=int, default=None, metavar="STEPS",
                        help="after training the network, train its colour reader for STEPS steps and turn reader "
                             "guidance on (the shipped design: 1200; needs --text-attributes), so one run makes a "
                             "folder that samples as the packaged one does")
    parser.add_argument("--noise-flow", type=float, default=None, metavar="A",
                        help="flowing noise: each teacher sample and distillation trajectory gets noise of which a share a, "
                             "drawn uniformly in [0, A], is one field moving along the velocity the prompt names, so the "
                             "noise moves the way the picture should (needs --text-velocity; default 0). The folder "
                             "samples on plain noise, which measured best for the packaged network trained this way")


RESUME_ADOPTS = ("teacher_steps", "distil_trajectories", "distil_steps", "student_steps", "context_drop",
                  "object_weight", "cross_attn_drop", "context_shift", "guidance", "noise_flow")


def average(args: argparse.Namespace) -> None:
    """`--average FIRST SECOND`: the weight average, and what the new folder still needs."""
    first, second = args.average
    info = average_folders(first, second, args.output, args.average_weight)
    print(f"[train-default] {args.output}: {', '.join(info['files'])} = {1 - args.average_weight:g} x {info['first']} "
          f"+ {args.average_weight:g} x {info['second']}; the colour reader and sampling settings are {info['first']}'s")
    if (Path(args.output) / READER_FILE).is_file():
        # a reader reads the student it was trained on best (model card)
        print(f"[train-default] the colour reader was trained on {info['first']}'s student: train one for the averaged "
              f"student first, {train_reader_command(args.output)} (~11 min on 2 CPU cores)")
    print(f"[train-default] LTC is uncalibrated for the new weights: {calibrate_command(args.output)}")


def main(args: argparse.Namespace) -> int:
    if args.average is not None:
        average(args)
        return 0
    if getattr(args, "train_reader", None) is not None:
        if args.train_reader < 1:
            raise ConfigError(f"--train-reader must be at least 1, got {args.train_reader}")
        train_reader_folder(args.output, args.train_reader, args.threads)
        return 0
    cfg = TrainConfig.quick() if args.quick else TrainConfig()
    cfg.seed, cfg.threads = args.seed, args.threads
    saved_meta = args.output / "ltc_model.json"
    saved_net: dict = {}
    if args.resume and saved_meta.is_file():
        # with --resume, settings not given on the command line are the folder's own: a plain
        # `--resume` reuses what is there instead of retraining it with the defaults
        try:
            meta = json.loads(saved_meta.read_text())
            saved, saved_net = meta.get("train", {}), meta.get("net", {})
        except json.JSONDecodeError:
            saved = {}
        for name in RESUME_ADOPTS:
            if getattr(args, name, None) is None and isinstance(saved.get(name), (int, float)):
                setattr(cfg, name, type(getattr(cfg, name))(saved[name]))
    for name in ("clips", "ae_steps", "teacher_steps", "distil_trajectories", "distil_steps", "student_steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            setattr(cfg, name, value)
    for name, low, high in (("guidance", 1, 20), ("context_drop", 0, 1), ("object_weight", 0, 100),
                            ("cross_attn_drop", 0, 1), ("context_shift", 0, 1), ("noise_flow", 0, 1)):
        value = getattr(args, name)
        if value is not None:
            if not low <= value <= high:
                raise ConfigError(f"--{name.replace('_', '-')} must be between {low} and {high}, got {value}")
            setattr(cfg, name, value)
    if args.size % 8 or not 32 <= args.size <= 512:
        raise ConfigError(f"--size must be a multiple of 8 between 32 and 512, got {args.size}")
    # network options off by default; with --resume, the folder's own unless given
    options = {key: getattr(args, key) if getattr(args, key) is not None else bool(saved_net.get(key, False))
               for key in NETWORK_SWITCHES}
    text_attributes = args.text_attributes if args.text_attributes is not None else bool(saved_net.get("attribute_classes"))
    options["attribute_classes"] = tuple(len(classes) for classes in ATTRIBUTES.values()) if text_attributes else ()
    if options["text_velocity"] and not text_attributes:
        raise ConfigError("--text-velocity reads the prompt through the attribute pooling: add --text-attributes")
    if cfg.noise_flow and not options["text_velocity"]:
        raise ConfigError("--noise-flow moves the noise along the velocity the network reads from the prompt: add --text-velocity")
    net = NetConfig(height=args.size, width=args.size, cross_attn=True, self_attn=args.self_attn, **options)
    if args.quick:
        net = NetConfig(height=args.size, width=args.size, ae_widths=(8, 8, 16), width0=16, width1=16,
                        blocks0=1, blocks1=1, cond_dim=32, text_queries=2, cross_attn=True, self_attn=args.self_attn,
                        **options)
    if args.init_from is not None and not (args.init_from / "ltc_model.json").is_file():
        raise ConfigError(f"--init-from {args.init_from}: not a default-model folder (no ltc_model.json)")
    if args.with_reader is not None and (args.with_reader < 1 or not text_attributes):
        raise ConfigError("--with-reader needs STEPS >= 1 and --text-attributes (the reader's guidance takes the "
                          f"prompt's colours from the attribute pooling), got {args.with_reader} steps"
                          + ("" if text_attributes else " without --text-attributes"))
    train(cfg, net, args.output, resume=args.resume, init_from=args.init_from, device=args.device)
    if args.with_reader is not None:
        train_reader_folder(args.output, args.with_reader, args.threads)
    return 0

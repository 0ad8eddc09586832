"""`poseserve train MODEL`: a seed network from a COCO keypoint file to a served backend.

One run: the family's dataset (top-down crops for AMFACPose / LE-HRNet, whole letterboxed images
for ER-Pose) -> DataLoader worker processes -> the paper's optimiser and schedule (``PAPER``,
PAPERS.md) -> checkpoints (``last.pt``, resumable) and a metrics CSV -> ``weights.pt`` -> an ONNX
export into the weights store whose card records the data, its licence, the teacher of any
pseudo-labels, the steps and the AP reached on the evaluation set (the served backend, scored by
``service.evaluate``). The exported card is not ``untrained``: the backend serves without
``--allow-untrained``.

Choices the papers leave open (config fields, so a run can change them):

* AMFACPose: AdamW, batch 32, 140 epochs (paper); lr 1e-3, weight decay 1e-4 and a x0.1 step at
  epochs 90 and 120 are mmpose's SimCC-ResNet schedule (the paper's lr is not in the text).
* LE-HRNet: Adam, lr 1e-3, batch 16, 300 epochs (paper); the x0.1 steps at 2/3 and 13/15 of the
  run follow HRNet's 170 / 200 of 210 epochs.
* ER-Pose: AdamW, wd 0.05, lr 0.01 -> 1e-4 cosine, 640 x 640, Mosaic (paper); batch 16 and 300
  epochs are YOLOv8's pose defaults.
* every schedule: linear warm-up over the first ``warmup_steps`` (min(500, 5 %) of the run).

Schedules are fractions of the run, so ``steps`` (a short run) keeps their shape. Mixed precision
(bf16 autocast) only on a CUDA device. Multi-GPU: under ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) each process trains on its ``LOCAL_RANK`` GPU (gloo on CPU) with a
``DistributedSampler`` and ``DistributedDataParallel``; only rank 0 writes checkpoints, metrics and
the export.

A resumed run restores the network, optimiser, schedule and step; its data order restarts from a
generator seeded by (seed, step), so it is repeatable but not the sequence the first run would
have drawn.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.export import SEED_MODELS, build, export_to_store
from models.train.coco import data_facts, load_coco, split_ids
from models.train.data import PAPER_AUGMENT, CocoCropDataset, CropSample, seed_worker
from models.train.erpose_data import ERPoseAugment, ERPoseDataset, collate
from models.train.merge import MergeRule, merge_supervision

__all__ = ["PAPER", "TrainConfig", "TrainResult", "config_for", "family", "train"]

Family = Literal["amfacpose", "lehrnet", "erpose"]


class TrainConfig(BaseModel):
    """One training run (defaults: ``config_for(MODEL)``; a ``--config`` TOML / JSON file overrides)."""

    model_config = ConfigDict(extra="forbid")

    input_hw: tuple[int, int] | None = None
    """Network input (H, W) pixels; the catalogue's when None (ER-Pose: square, a multiple of 32)."""
    batch_size: int = 32
    epochs: float = 140
    steps: int | None = None
    """Total optimiser steps; overrides ``epochs`` (short runs)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    final_lr: float = 1e-4
    """Cosine schedule's end value."""
    weight_decay: float = 1e-4
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[float, ...] = (90 / 140, 120 / 140)
    """Multistep: fractions of the run where lr is multiplied by ``gamma``."""
    gamma: float = 0.1
    warmup_steps: int | None = None
    max_grad_norm: float | None = 10.0
    augment: bool = True
    workers: int = 2
    seed: int = 0
    amp: bool = True
    """bf16 autocast on a CUDA device (never on the CPU: no faster on a CPU without AMX)."""
    channels_last: bool = True
    """NHWC tensors: on a 2-core AVX-512 CPU an AMFACPose-R18 step at 128x128 took 0.8x the time."""
    split: str | None = None
    """Image ids trained on: ``A-B`` or ``first:N`` (LSPET: ``1-9000``), all when None."""
    min_keypoints: int = 4
    teacher_data: Path | None = None
    """Pseudo-labels (``poseserve data pseudolabel``) merged into the labels by ``merge``."""
    merge: MergeRule = MergeRule()
    checkpoint_every: int = 500
    log_every: int = 10
    """Metrics CSV flushed (and, off a terminal, a progress line printed) every N steps."""
    export: bool = True
    eval_data: Path | None = None
    eval_images: Path | None = None
    eval_split: str | None = None
    """Evaluate on only these image ids of ``eval_data`` (``A-B`` or ``first:N``; quick checks)."""
    eval_boxes: Literal["detector", "gt"] = "detector"


PAPER: dict[Family, dict[str, Any]] = {
    "amfacpose": {
        "batch_size": 32,
        "epochs": 140,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "multistep",
        "milestones": (90 / 140, 120 / 140),
    },
    "lehrnet": {
        "batch_size": 16,
        "epochs": 300,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "multistep",
        "milestones": (200 / 300, 260 / 300),
    },
    "erpose": {
        "batch_size": 16,
        "epochs": 300,
        "optimizer": "adamw",
        "lr": 1e-2,
        "final_lr": 1e-4,
        "weight_decay": 0.05,
        "schedule": "cosine",
    },
}
"""Each family's optimiser and schedule as its paper (or the closest public method) states them."""


def family(model: str) -> Family:
    if model not in SEED_MODELS:
        raise KeyError(f"unknown seed model {model!r}; known: {', '.join(sorted(SEED_MODELS))}")
    name = model.split("-")[0]
    assert name in PAPER
    return name


def config_for(model: str, file: Path | None = None, **overrides: Any) -> TrainConfig:
    """The paper defaults of ``model``, then ``file`` (TOML or JSON), then ``overrides`` (not None)."""
    values: dict[str, Any] = dict(PAPER[family(model)])
    if file is not None:
        text = Path(file).read_text(encoding="utf-8")
        values |= tomllib.loads(text) if Path(file).suffix == ".toml" else json.loads(text)
    values |= {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(**values)


# -- batches ------------------------------------------------------------------------------------------


class CropCollate:
    """Top-down batch: images ``(B, 3, H, W)`` and the codec's targets (runs in loader workers)."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec

    def __call__(self, samples: list[CropSample]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        encoded = [self.codec.encode(s.keypoints, s.visible) for s in samples]
        targets = tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*encoded, strict=True))
        return torch.from_numpy(np.stack([s.image for s in samples])), targets


@dataclass
class _Task:
    dataset: Dataset[Any]
    collate: Callable[[list[Any]], Any]
    loss: Callable[[Any, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]
    facts: dict[str, str]


def _labels(cfg: TrainConfig, data: Path) -> dict[str, Any]:
    dataset: dict[str, Any] = load_coco(data).dataset
    if cfg.teacher_data is not None:
        dataset = merge_supervision(dataset, load_coco(cfg.teacher_data).dataset, cfg.merge)
    return dataset


def _task(
    model_name: str, net: nn.Module, cfg: TrainConfig, input_hw: tuple[int, int], data: Path, images: Path
) -> _Task:
    from models.codecs.heatmap import HeatmapCodec
    from models.codecs.simcc import SimCCCodec
    from models.losses.erpose import ERPoseLoss
    from models.losses.heatmap import HeatmapMSELoss
    from models.losses.simcc import KLDDiscretLoss

    labels = _labels(cfg, data)
    facts = data_facts(labels)
    ids = split_ids([img["id"] for img in labels["images"]], cfg.split)
    fam = family(model_name)
    h, w = input_hw
    if fam == "erpose":
        criterion = ERPoseLoss(h, net.strides)  # type: ignore[arg-type]
        augment = ERPoseAugment() if cfg.augment else None
        dataset: Dataset[Any] = ERPoseDataset(labels, images, h, augment=augment, seed=cfg.seed, image_ids=ids)

        def erpose_loss(out: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
            kpts = [k.to(device) for k in batch[1]]
            boxes = [b.to(device) for b in batch[2]]
            loss, parts = criterion.to(device)(out, kpts, boxes)
            return loss, {k: float(v) for k, v in parts.items()}

        return _Task(dataset, collate, erpose_loss, facts)
    crop_augment = PAPER_AUGMENT[fam] if cfg.augment else None
    dataset = CocoCropDataset(  # type: ignore[assignment]  # map-style: __len__ + __getitem__
        labels, images, input_hw, augment=crop_augment, seed=cfg.seed, image_ids=ids, min_keypoints=cfg.min_keypoints
    )
    if fam == "amfacpose":
        kld = KLDDiscretLoss()

        def simcc_loss(out: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
            tx, ty, weights = (t.to(device) for t in batch[1])
            return kld(out[0], out[1], tx, ty, weights), {}

        return _Task(dataset, CropCollate(SimCCCodec((w, h), split_ratio=2.0)), simcc_loss, facts)
    mse = HeatmapMSELoss()

    def heatmap_loss(out: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        target, weights = (t.to(device) for t in batch[1])
        return mse(out.float(), target, weights), {}

    return _Task(dataset, CropCollate(HeatmapCodec((w, h), (w // 4, h // 4), sigma=2.0)), heatmap_loss, facts)


# -- schedule, distribution, checkpoints ----------------------------------------------------------------


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based) of ``total``."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, max(1, total // 20))
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = step / max(1, total)
    if cfg.schedule == "cosine":
        end = cfg.final_lr / cfg.lr
        return ramp * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))
    if cfg.schedule == "multistep":
        return ramp * cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    return ramp


@dataclass(frozen=True)
class _Dist:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _distributed() -> _Dist:
    """torchrun's environment -> this process's rank and device (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return _Dist(device=torch.device("cuda" if cuda else "cpu"))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return _Dist(torch.device(f"cuda:{local}" if cuda else "cpu"), dist.get_rank(), world)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    model: str
    out_dir: Path
    steps: int
    start_step: int
    losses: list[float]
    seconds_per_step: float
    checkpoint: Path
    weights: Path | None = None
    card: Any = None
    eval: dict[str, Any] | None = None


def _batches(loader: DataLoader[Any], sampler: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(
    model_name: str,
    data: Path,
    images: Path,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    model_dir: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model_name`` on ``data`` (COCO keypoints, images under ``images``) into ``out_dir``.

    ``out_dir`` gets ``last.pt`` (resumable checkpoint), ``metrics.csv``, ``config.json`` and, at
    the end, ``weights.pt``; with ``cfg.export`` the network is exported into ``model_dir`` and,
    with ``cfg.eval_data``, evaluated there as the served backend (AP written into its card).
    """
    dist = _distributed()
    torch.manual_seed(cfg.seed + dist.rank)
    entry = SEED_MODELS[model_name]
    input_hw = cfg.input_hw or entry.input_hw
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = build(model_name, input_hw).to(dist.device)
    net = net.to(memory_format=layout)  # type: ignore[call-overload]  # missing from torch's stubs
    task = _task(model_name, net, cfg, input_hw, data, images)
    if len(task.dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"no training samples in {data} (split {cfg.split!r})")
    steps_per_epoch = max(1, math.ceil(len(task.dataset) / (cfg.batch_size * dist.world)))  # type: ignore[arg-type]
    total = cfg.steps or max(1, round(cfg.epochs * steps_per_epoch))

    params_decay = [p for p in net.parameters() if p.ndim > 1]
    params_other = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": params_decay, "weight_decay": cfg.weight_decay}, {"params": params_other, "weight_decay": 0.0}]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "last.pt"
    start = 0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=dist.device, weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    if dist.main:
        run = {"model": model_name, "data": str(data), "images": str(images), **cfg.model_dump(mode="json")}
        (out_dir / "config.json").write_text(json.dumps(run, indent=2))

    sampler: Any = None
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
    if dist.world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(task.dataset, num_replicas=dist.world, rank=dist.rank, seed=cfg.seed + start)
    loader = DataLoader(
        task.dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=task.collate,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=len(task.dataset) >= cfg.batch_size * dist.world,  # type: ignore[arg-type]
        persistent_workers=cfg.workers > 0,
        pin_memory=dist.device.type == "cuda",
    )
    module: nn.Module = net
    if dist.world > 1:
        module = nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    amp = cfg.amp and dist.device.type == "cuda"
    metrics = out_dir / "metrics.csv"
    new_csv = not (resume and metrics.is_file())
    losses: list[float] = []
    started = time.perf_counter()
    bar = _Progress(total, start, enabled=progress and dist.main)
    with metrics.open("w" if new_csv else "a", newline="") as fh, bar:
        writer = csv.writer(fh)
        if new_csv and dist.main:
            writer.writerow(["step", "epoch", "loss", "lr", "seconds", "parts"])
        batches = _batches(loader, sampler)
        module.train()
        for step in range(start, total):
            batch = next(batches)
            images_t = batch[0].to(dist.device, non_blocking=True).contiguous(memory_format=layout)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
                out = module(images_t)
            loss, parts = task.loss(out, batch, dist.device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step + 1}: {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            value = float(loss.detach())
            losses.append(value)
            done = step + 1
            if dist.main:
                elapsed = time.perf_counter() - started
                writer.writerow([done, f"{done / steps_per_epoch:.3f}", f"{value:.6f}", f"{lr:.3e}", f"{elapsed:.2f}",
                                 json.dumps({k: round(v, 5) for k, v in parts.items()})])  # fmt: skip
                bar.update(done, value, lr)
                if done % cfg.log_every == 0:
                    fh.flush()
                    bar.line(done, value, lr)
                if done % cfg.checkpoint_every == 0 or done == total:
                    fh.flush()
                    _save(
                        checkpoint,
                        {
                            "model": net.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": done,
                            "model_name": model_name,
                            "input_hw": list(input_hw),
                        },
                    )
    seconds = (time.perf_counter() - started) / max(1, total - start)
    result = TrainResult(model_name, out_dir, total, start, losses, seconds, checkpoint)
    if not dist.main:
        return result
    result.weights = out_dir / "weights.pt"
    _save(result.weights, {"model": net.state_dict(), "step": total, "input_hw": list(input_hw)})
    if cfg.export and model_dir is not None:
        _export_and_eval(result, cfg, task.facts, input_hw, data, model_dir)
    return result


WEIGHTS_TERMS = "trained by poseserve train; bound by the training data's terms (training_data)"


def _export_and_eval(
    result: TrainResult, cfg: TrainConfig, facts: dict[str, str], input_hw: tuple[int, int], data: Path, model_dir: Path
) -> None:
    from models.card import write_card

    training: dict[str, Any] = {
        "data": str(data),
        "data_description": facts.get("description", ""),
        "teacher": facts.get("teacher") or (str(cfg.teacher_data) if cfg.teacher_data else None),
        "teacher_data": str(cfg.teacher_data) if cfg.teacher_data else None,
        "merge": cfg.merge.model_dump(mode="json") if cfg.teacher_data else None,
        "split": cfg.split,
        "steps": result.steps,
        "input_hw": list(input_hw),
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
    }
    licence = {
        "weights": WEIGHTS_TERMS,
        "training_data": facts.get("licence", "unknown"),
    }
    if facts.get("citation"):
        licence["citation"] = facts["citation"]
    card = export_to_store(
        result.model, model_dir, checkpoint=result.weights, input_hw=input_hw, training=training, licence=licence
    )
    result.card = card
    if cfg.eval_data is None:
        return
    from service.config import Settings
    from service.evaluate import evaluate_backend

    entry = SEED_MODELS[result.model]
    backend = entry.backend or entry.name
    report = evaluate_backend(
        backend,
        cfg.eval_data,
        cfg.eval_images or cfg.eval_data.parent,
        settings=Settings(model_dir=model_dir, preload=()),
        boxes=cfg.eval_boxes,
        split=cfg.eval_split,
    )
    result.eval = report.as_dict()
    training["eval"] = {
        "data": str(cfg.eval_data),
        "images": report.images,
        "split": cfg.eval_split,
        "boxes": report.boxes,
        "AP": round(report.stats["AP"], 4),
        "AP_body12": round(report.body_stats["AP"], 4),
        "stats": {k: round(v, 4) for k, v in report.stats.items()},
    }
    onnx = Path(model_dir) / card.file
    result.card = card.model_copy(update={"source": {"training": training}})
    write_card(onnx.with_suffix(".json"), result.card)


class _Progress:
    """A rich progress bar (loss, lr, ETA) on rank 0; silent when disabled."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.enabled, self.total = enabled, total
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task("train", total=total, completed=start, loss=float("nan"), lr=0.0)

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.enabled:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr)

    def line(self, step: int, loss: float, lr: float) -> None:
        """Off a terminal (a log file, ``nohup``) the bar is not drawn: a plain line instead."""
        if not self.enabled or self._bar.console.is_terminal:
            return
        task = self._bar.tasks[0]
        left = f"{task.time_remaining:.0f} s" if task.time_remaining is not None else "?"
        self._bar.console.print(f"train {step}/{self.total} loss {loss:.4f} lr {lr:.2e} left {left}", highlight=False)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()

"""The training loop shared by MusER.py and Prior_train.py.

One loop, read top to bottom: shuffle (a seeded DistributedSampler, also with one process),
batch, forward under optional bf16 autocast, check the loss is finite, backward, clip,
step; at the end of each epoch validate, log, write `last.pt` and (when the monitored loss,
see `monitored_loss`, improved) `best.pt`, both atomically, and rewrite the CSV log from the history stored in
the checkpoint (so a resumed run never duplicates or loses rows).

Interruptions: Ctrl-C or SIGTERM finishes the current step, saves a mid-epoch `last.pt`
(batch position, running sums and RNG state included) and returns 0; `--resume` continues
from it and gives the same weights as an uninterrupted run. A hard kill loses at most the
current epoch: the previous `last.pt` is intact because writes are atomic.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from music.atomic import write_csv
from run.checkpoint import load_checkpoint, save_checkpoint
from run.cli import resolve_device, seed_everything, setup_logging
from run.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, local_device
from run.pipeline import check_run_dir
from run.threads import adapt_threads
from music.errors import UserError

StepFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self, logger: logging.Logger):
        self.requested = False
        self.logger = logger
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        self.logger.warning("stop requested: finishing this step and saving last.pt ...")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def check_training_args(args) -> None:
    """Reject training flags that cannot work before any data is loaded (one-line errors)."""
    for flag, value in (("--Epoch", args.Epoch), ("--batch_size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--lr", args.lr), ("--clip", args.clip)):
        if not value > 0:  # also catches nan
            raise UserError(f"{flag} must be positive, got {value}")


def start_training(args) -> tuple[torch.device, DistInfo]:
    """Check the training flags, pick the device, join a torchrun group if any, seed per rank."""
    check_training_args(args)
    device = resolve_device(args.device)
    dist = init_distributed(device)
    device = local_device(device, dist)
    seed_everything(args.seed + dist.rank)
    return device, dist


def open_run(out_dir: Path, args, kind: str, dist: DistInfo
             ) -> tuple[logging.Logger, dict[str, Any] | None, Path | None]:
    """Claim the run folder (an earlier run needs --resume or --overwrite), start the log,
    and load last.pt when resuming. Returns (logger, resume checkpoint, its path)."""
    resume_path = check_run_dir(out_dir, args.resume, args.overwrite) if dist.is_main else None
    if args.resume:
        resume_path = out_dir / "last.pt"
    logger = setup_logging(args.log_path or out_dir / "train.log", dist.rank)
    resume = load_checkpoint(resume_path, kind) if resume_path else None
    return logger, resume, resume_path


def split_indices(n: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/validation split of n rows (val_split = fraction held out)."""
    if not 0.0 <= val_split < 1.0:
        raise UserError(f"--val_split must be in [0, 1), got {val_split}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split))
    if val_split > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise UserError(f"--val_split {val_split} leaves no training data out of {n} pieces")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_tensors(tensors: dict, val_split: float, seed: int):
    """(train, val or None, n_train, n_val): the rows of every tensor, split by split_indices."""
    train_idx, val_idx = split_indices(len(next(iter(tensors.values()))), val_split, seed)
    train = {k: v[train_idx] for k, v in tensors.items()}
    val = {k: v[val_idx] for k, v in tensors.items()} if len(val_idx) else None
    return train, val, len(train_idx), len(val_idx)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class MetricSums:
    """Batch-size-weighted sums of scalar metrics, plus codebook usage counts."""

    def __init__(self, n_codes: int | None, state: dict | None = None):
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.count = state["count"] if state else 0
        self.codes = (state["codes"].clone() if state else torch.zeros(n_codes, dtype=torch.long)) \
            if n_codes else None

    def add(self, out: dict[str, torch.Tensor], batch_size: int) -> None:
        for key, value in out.items():
            if key == "codes":
                if self.codes is not None:
                    self.codes += torch.bincount(value.reshape(-1).cpu(), minlength=len(self.codes))
            elif value.dim() == 0:
                self.sums[key] = self.sums.get(key, 0.0) + float(value) * batch_size
        self.count += batch_size

    def state(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count, "codes": self.codes}

    def reduce(self, info: DistInfo) -> dict[str, float]:
        keys = sorted(self.sums)
        packed = torch.tensor([self.sums[k] for k in keys] + [self.count], dtype=torch.float64)
        packed = all_reduce_sum(packed, info)
        count = max(packed[-1].item(), 1.0)
        result = {k: packed[i].item() / count for i, k in enumerate(keys)}
        if self.codes is not None:
            codes = all_reduce_sum(self.codes.clone(), info).double()
            probs = codes / codes.sum().clamp(min=1)
            result["code_usage"] = (codes > 0).double().mean().item()
            result["codes_used"] = int((codes > 0).sum().item())
            result["code_perplexity"] = math.exp(-(probs * probs.clamp(min=1e-12).log()).sum().item())
        return result


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """An epoch's training batches: the last incomplete one is dropped, as the authors'
    loaders do (drop_last), unless it is the only batch (fewer pieces than batch_size)."""
    batches = _batches(order, batch_size)
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def monitored_loss(row: dict[str, Any]) -> float:
    """What best.pt minimises: the reconstruction loss when there is one (the authors'
    choice for the VQ-VAE), else the loss (the prior)."""
    return row["recon"] if "recon" in row else row["loss"]


def _gather(data: dict[str, torch.Tensor], idx: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    index = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[index].to(device, non_blocking=True) for k, v in data.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, step_fn: StepFn, data: dict[str, torch.Tensor], batch_size: int,
             device: torch.device, autocast, n_codes: int | None) -> dict[str, float]:
    model.eval()
    sums = MetricSums(n_codes)
    n = len(next(iter(data.values())))
    for idx in _batches(list(range(n)), batch_size):
        with autocast():
            out = step_fn(model, _gather(data, idx, device))
        sums.add(out, len(idx))
    model.train()
    return sums.reduce(DistInfo())


def _plot_history(csv_path: Path, logger: logging.Logger) -> None:
    try:
        # Imported here: it loads matplotlib, slow to import and needed only to draw.
        from evaluation.plotting import plot_loss_curves
        plot_loss_curves(csv_path, csv_path.with_name("loss_curves.png"))
    except ImportError:
        pass
    except Exception as exc:  # a figure must never stop a training run
        logger.warning(f"could not draw loss curves: {exc}")


def fit(*, model: torch.nn.Module, step_fn: StepFn, train: dict[str, torch.Tensor],
        val: dict[str, torch.Tensor] | None, args, out_dir: Path, device: torch.device,
        logger: logging.Logger, checkpoint_meta: dict[str, Any], dist: DistInfo = DistInfo(),
        n_codes: int | None = None, resume: dict[str, Any] | None = None) -> int:
    """Train `model` for args.Epoch epochs; returns the process exit code.

    `step_fn(forward_model, batch)` returns a dict of scalar tensors with a "loss" entry (and
    optionally "codes", counted for codebook usage). `args` carries Epoch, batch_size, lr,
    clip, seed, amp, compile.
    """
    out_dir = Path(out_dir)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    state = _initial_state(model, optimizer, resume, args.Epoch, out_dir, logger)
    loop = _TrainingLoop(model=model, forward_model=_forward_model(model, args, dist, device, logger),
                         optimizer=optimizer, step_fn=step_fn, train=train, val=val, args=args,
                         out_dir=out_dir, device=device, logger=logger, checkpoint_meta=checkpoint_meta,
                         dist=dist, n_codes=n_codes, state=state, autocast=_autocast(args, device),
                         sampler=_sampler(train, args.seed, dist))
    return loop.run()


def _initial_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: dict[str, Any] | None,
                   epochs: int, out_dir: Path, logger: logging.Logger) -> dict[str, Any]:
    """Where the run starts: epoch and batch, best monitored loss, history and the running sums
    of an interrupted epoch. Resuming also restores the weights, the optimizer and the RNGs."""
    state = {"epoch": 0, "batch": 0, "best_loss": math.inf, "history": [], "running": None}
    if resume is None:
        return state
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    state.update({k: resume[k] for k in ("epoch", "batch", "best_loss", "history")})
    state["running"] = resume.get("running")
    _set_rng_state(resume["rng"])
    where = f"epoch {state['epoch']}" + (f", batch {state['batch']}" if state["batch"] else "")
    logger.info(f"resumed from {out_dir / 'last.pt'} at {where}")
    if state["epoch"] >= epochs:
        logger.info(f"nothing to do: the run has trained {state['epoch']} epochs and --Epoch is {epochs}")
    return state


def _forward_model(model: torch.nn.Module, args, dist: DistInfo, device: torch.device,
                   logger: logging.Logger) -> torch.nn.Module:
    """What the steps call: `model`, inside DistributedDataParallel under torchrun, compiled
    with --compile True."""
    forward_model = model
    if dist.enabled:
        ddp_device = [device.index] if device.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)
    if getattr(args, "compile", False):
        # Compilation happens at the first forward; a failure there (no C++ compiler, an
        # unsupported op) must fall back to eager instead of ending the run. Imported here:
        # dynamo is slow to import and only --compile needs it.
        import torch._dynamo as dynamo
        dynamo.config.suppress_errors = True
        try:
            forward_model = torch.compile(forward_model)
        except Exception as exc:
            logger.warning(f"torch.compile unavailable here ({exc}); running eagerly")
    return forward_model


def _autocast(args, device: torch.device) -> Callable[[], Any]:
    """A context for each forward pass: bf16 autocast with --amp True, else none."""
    if getattr(args, "amp", False):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _sampler(train: dict[str, torch.Tensor], seed: int, dist: DistInfo) -> DistributedSampler:
    """A seeded shuffle per epoch, the same with one process as with many."""
    n_train = len(next(iter(train.values())))
    return DistributedSampler(range(n_train), num_replicas=dist.world_size, rank=dist.rank,
                              shuffle=True, seed=seed, drop_last=False)


@dataclass
class _TrainingLoop:
    """The loop of `fit`, one method per level: epochs, an epoch's steps, one step, the end of
    an epoch. A method that returns an exit code ends the run with it."""
    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: StepFn
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor] | None
    args: Any
    out_dir: Path
    device: torch.device
    logger: logging.Logger
    checkpoint_meta: dict[str, Any]
    dist: DistInfo
    n_codes: int | None
    state: dict[str, Any]
    autocast: Callable[[], Any]
    sampler: DistributedSampler
    stop: StopFlag | None = None
    last_plot: float = 0.0

    def run(self) -> int:
        self.model.train()
        self.last_plot = time.time()
        with StopFlag(self.logger) as self.stop:
            for epoch in range(self.state["epoch"], self.args.Epoch):
                began = time.time()
                sums, code = self.train_epoch(epoch)
                if code is None:
                    code = self.end_epoch(epoch, sums, began)
                if code is not None:
                    return code
        return 0

    def train_epoch(self, epoch: int) -> tuple[MetricSums, int | None]:
        """The steps of one epoch, from the saved batch when resuming within it: the epoch's
        metric sums, and an exit code when the run ended during the epoch."""
        self.sampler.set_epoch(epoch)
        batches = epoch_batches(list(self.sampler), self.args.batch_size)
        start = self.state["batch"] if epoch == self.state["epoch"] else 0
        sums = MetricSums(self.n_codes, self.state["running"] if start else None)
        bar = tqdm(range(start, len(batches)), initial=start, total=len(batches),
                   desc=f"epoch {epoch + 1}/{self.args.Epoch}", disable=not self.dist.is_main, leave=False)
        for b in bar:
            code = self.step(epoch, b, batches, sums, bar)
            if code is not None:
                return sums, code
        bar.close()
        return sums, None

    def step(self, epoch: int, b: int, batches: list[list[int]], sums: MetricSums, bar) -> int | None:
        """One optimiser step on batch b; an exit code when the run ends here: a loss or
        gradient that is not finite, or a stop request with batches of the epoch left."""
        adapt_threads()
        batch = _gather(self.train, batches[b], self.device)
        with self.autocast():
            out = self.step_fn(self.forward_model, batch)
        loss = out["loss"]
        flags = torch.tensor([float(not torch.isfinite(loss)), float(self.stop.requested)])
        flags = all_reduce_sum(flags, self.dist)
        if flags[0] > 0:
            return _diverged(self.logger, f"loss became {loss.item()}", _at_step(epoch, b), self.out_dir)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        # A finite loss can still give inf/NaN gradients; stepping on them would
        # poison the weights that the end of the epoch then saves as last.pt.
        # (DDP averages gradients first, so every rank sees the same norm.)
        if not torch.isfinite(grad_norm):
            return _diverged(self.logger, f"gradient norm became {grad_norm.item()}", _at_step(epoch, b),
                             self.out_dir)
        self.optimizer.step()
        sums.add({k: v.detach() for k, v in out.items()}, len(batches[b]))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if flags[1] > 0 and b + 1 < len(batches):
            return self.stop_within_epoch(epoch, b, len(batches), sums)
        return None

    def stop_within_epoch(self, epoch: int, b: int, n_batches: int, sums: MetricSums) -> int:
        """Save last.pt after batch b, running sums included, for --resume; exit code 0."""
        if (bad := _nonfinite_weights(self.model)) is not None:
            return _diverged(self.logger, f"weight {bad} became non-finite", _at_step(epoch, b), self.out_dir)
        if self.dist.is_main:
            save_checkpoint(self.out_dir / "last.pt", self.checkpoint(epoch, b + 1, sums.state()))
        self.logger.info(f"stopped at epoch {epoch + 1}, batch {b + 1}/{n_batches}; "
                         f"saved {self.out_dir / 'last.pt'}; continue with --resume")
        return 0

    def end_epoch(self, epoch: int, sums: MetricSums, began: float) -> int | None:
        """Validate, check that the losses and weights are finite, record, save and log the
        epoch; an exit code when the run ends here."""
        rows = [{"epoch": epoch + 1, "split": "train", **sums.reduce(self.dist)}]
        if self.val is not None:
            rows.append({"epoch": epoch + 1, "split": "val",
                         **evaluate(self.model, self.step_fn, self.val, self.args.batch_size, self.device,
                                    self.autocast, self.n_codes)})
        monitored = monitored_loss(rows[-1])       # validation when there is some
        at_end = f"the end of epoch {epoch + 1}"
        if not (math.isfinite(monitored) and math.isfinite(rows[-1]["loss"])):
            split = "validation" if self.val is not None else "training"
            return _diverged(self.logger, f"the {split} loss became {rows[-1]['loss']} (monitored {monitored})",
                             at_end, self.out_dir)
        if (bad := _nonfinite_weights(self.model)) is not None:
            return _diverged(self.logger, f"weight {bad} became non-finite", at_end, self.out_dir)
        self.state["history"] = self.state["history"] + rows
        improved = monitored < self.state["best_loss"]
        if improved:
            self.state["best_loss"] = monitored
        if self.dist.is_main:
            self.save_epoch(epoch, improved)
        self.logger.info(f"epoch {epoch + 1}/{self.args.Epoch} " + " | ".join(_summary(r) for r in rows)
                         + f" | {time.time() - began:.1f}s"
                         + (f" | best ({'recon' if 'recon' in rows[-1] else 'loss'} {monitored:.4f}, "
                            f"total {rows[-1]['loss']:.4f})" if improved else ""))
        barrier(self.dist)
        if self.stop.requested:
            self.logger.info(f"stopped after epoch {epoch + 1}; continue with --resume")
            return 0
        return None

    def save_epoch(self, epoch: int, improved: bool) -> None:
        """last.pt, best.pt when the monitored loss improved, metrics.csv and the loss curves."""
        ckpt = self.checkpoint(epoch + 1, 0, None)
        save_checkpoint(self.out_dir / "last.pt", ckpt)
        if improved:
            save_checkpoint(self.out_dir / "best.pt", ckpt)
        write_csv(self.out_dir / "metrics.csv", self.state["history"])
        # Drawing costs seconds: redraw at most once a minute, and at the end.
        if epoch + 1 == self.args.Epoch or self.stop.requested or time.time() - self.last_plot > 60:
            _plot_history(self.out_dir / "metrics.csv", self.logger)
            self.last_plot = time.time()

    def checkpoint(self, epoch: int, batch: int, running: dict | None) -> dict[str, Any]:
        return {**self.checkpoint_meta, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "batch": batch, "running": running, "best_loss": self.state["best_loss"],
                "history": self.state["history"], "rng": _rng_state()}


def _nonfinite_weights(model: torch.nn.Module) -> str | None:
    """Name of the first parameter or buffer holding inf/NaN, or None: checked before saving."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def _at_step(epoch: int, batch: int) -> str:
    return f"epoch {epoch + 1}, batch {batch + 1}"


def _diverged(logger: logging.Logger, what: str, where: str, out_dir: Path) -> int:
    """Stop a run whose loss, gradients or weights stopped being finite; exit code 1."""
    logger.error(f"error: {what} at {where}; training stopped, the last good checkpoint "
                 f"is kept in {out_dir} (try a lower --lr)")
    return 1


def _summary(row: dict[str, Any]) -> str:
    keys = [k for k in ("loss", "recon", "vq", "reg", "acc_mean", "code_usage") if k in row]
    text = f"{row['split']} " + " ".join(f"{k} {row[k]:.4f}" for k in keys)
    return text + (f" codes_used {row['codes_used']}" if "codes_used" in row else "")

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
    state = {"epoch": 0, "batch": 0, "best_loss": math.inf, "history": [], "running": None}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        state.update({k: resume[k] for k in ("epoch", "batch", "best_loss", "history")})
        state["running"] = resume.get("running")
        _set_rng_state(resume["rng"])
        where = f"epoch {state['epoch']}" + (f", batch {state['batch']}" if state["batch"] else "")
        logger.info(f"resumed from {out_dir / 'last.pt'} at {where}")
        if state["epoch"] >= args.Epoch:
            logger.info(f"nothing to do: the run has trained {state['epoch']} epochs and --Epoch is {args.Epoch}")

    forward_model = model
    if dist.enabled:
        ddp_device = [device.index] if device.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)
    if getattr(args, "compile", False):
        # Compilation happens at the first forward; a failure there (no C++ compiler, an
        # unsupported op) must fall back to eager instead of ending the run.
        import torch._dynamo as dynamo
        dynamo.config.suppress_errors = True
        try:
            forward_model = torch.compile(forward_model)
        except Exception as exc:
            logger.warning(f"torch.compile unavailable here ({exc}); running eagerly")
    use_amp = bool(getattr(args, "amp", False))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext

    n_train = len(next(iter(train.values())))
    sampler = DistributedSampler(range(n_train), num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=args.seed, drop_last=False)

    def checkpoint(epoch: int, batch: int, running: dict | None) -> dict[str, Any]:
        return {**checkpoint_meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "batch": batch, "running": running, "best_loss": state["best_loss"],
                "history": state["history"], "rng": _rng_state()}

    model.train()
    last_plot = time.time()
    with StopFlag(logger) as stop:
        for epoch in range(state["epoch"], args.Epoch):
            sampler.set_epoch(epoch)
            batches = epoch_batches(list(sampler), args.batch_size)
            start = state["batch"] if epoch == state["epoch"] else 0
            sums = MetricSums(n_codes, state["running"] if start else None)
            began = time.time()
            bar = tqdm(range(start, len(batches)), initial=start, total=len(batches),
                       desc=f"epoch {epoch + 1}/{args.Epoch}", disable=not dist.is_main, leave=False)
            for b in bar:
                adapt_threads()
                batch = _gather(train, batches[b], device)
                with autocast():
                    out = step_fn(forward_model, batch)
                loss = out["loss"]
                flags = torch.tensor([float(not torch.isfinite(loss)), float(stop.requested)])
                flags = all_reduce_sum(flags, dist)
                if flags[0] > 0:
                    return _diverged(logger, f"loss became {loss.item()}", _at_step(epoch, b), out_dir)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                # A finite loss can still give inf/NaN gradients; stepping on them would
                # poison the weights that the end of the epoch then saves as last.pt.
                # (DDP averages gradients first, so every rank sees the same norm.)
                if not torch.isfinite(grad_norm):
                    return _diverged(logger, f"gradient norm became {grad_norm.item()}", _at_step(epoch, b),
                                     out_dir)
                optimizer.step()
                sums.add({k: v.detach() for k, v in out.items()}, len(batches[b]))
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if flags[1] > 0 and b + 1 < len(batches):
                    if (bad := _nonfinite_weights(model)) is not None:
                        return _diverged(logger, f"weight {bad} became non-finite", _at_step(epoch, b), out_dir)
                    if dist.is_main:
                        save_checkpoint(out_dir / "last.pt", checkpoint(epoch, b + 1, sums.state()))
                    logger.info(f"stopped at epoch {epoch + 1}, batch {b + 1}/{len(batches)}; "
                                f"saved {out_dir / 'last.pt'}; continue with --resume")
                    return 0
            bar.close()

            row = {"epoch": epoch + 1, "split": "train", **sums.reduce(dist)}
            rows = [row]
            if val is not None:
                rows.append({"epoch": epoch + 1, "split": "val",
                             **evaluate(model, step_fn, val, args.batch_size, device, autocast, n_codes)})
            monitored = monitored_loss(rows[-1])       # validation when there is some
            at_end = f"the end of epoch {epoch + 1}"
            if not (math.isfinite(monitored) and math.isfinite(rows[-1]["loss"])):
                return _diverged(logger, f"the {'validation' if val is not None else 'training'} loss became {rows[-1]['loss']} "
                                 f"(monitored {monitored})", at_end, out_dir)
            if (bad := _nonfinite_weights(model)) is not None:
                return _diverged(logger, f"weight {bad} became non-finite", at_end, out_dir)
            state["history"] = state["history"] + rows
            improved = monitored < state["best_loss"]
            if improved:
                state["best_loss"] = monitored
            if dist.is_main:
                ckpt = checkpoint(epoch + 1, 0, None)
                save_checkpoint(out_dir / "last.pt", ckpt)
                if improved:
                    save_checkpoint(out_dir / "best.pt", ckpt)
                write_csv(out_dir / "metrics.csv", state["history"])
                # Drawing costs seconds: redraw at most once a minute, and at the end.
                if epoch + 1 == args.Epoch or stop.requested or time.time() - last_plot > 60:
                    _plot_history(out_dir / "metrics.csv", logger)
                    last_plot = time.time()
            logger.info(f"epoch {epoch + 1}/{args.Epoch} " + " | ".join(_summary(r) for r in rows)
                        + f" | {time.time() - began:.1f}s"
                        + (f" | best ({'recon' if 'recon' in rows[-1] else 'loss'} {monitored:.4f}, "
                           f"total {rows[-1]['loss']:.4f})" if improved else ""))
            barrier(dist)
            if stop.requested:
                logger.info(f"stopped after epoch {epoch + 1}; continue with --resume")
                return 0
    return 0


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

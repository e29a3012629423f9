"""Vector quantiser with an EMA-updated codebook (van den Oord et al. 2017, appendix).

The codebook is not trained by gradients: in training mode each forward pass moves it
towards the mean of the encoder outputs assigned to each code, through bias-corrected
exponential moving averages of the assignment counts and of the summed vectors. In eval
mode it never moves. Every piece of EMA state, the step counter included, is a buffer, so
a reloaded model continues exactly where it stopped.

Optional dead-code restart (beyond the paper; Dhariwal et al. 2020, Jukebox): with
`dead_code_threshold` > 0, after each training update every code whose bias-corrected
moving-average count is below the threshold is moved onto a random encoder output of the
batch, and its moving averages are reset to describe a code that holds that vector with
count = threshold. It stays there while it attracts at least `threshold` vectors a step on
average, and is re-seeded otherwise.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class EMAVectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25,
                 decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.0):
        super().__init__()
        self.dead_code_threshold = float(dead_code_threshold)
        self.num_codes = num_codes
        self.dim = dim
        self.commitment = commitment
        self.decay = decay
        self.eps = eps
        codebook = torch.empty(num_codes, dim)
        nn.init.xavier_uniform_(codebook)
        self.register_buffer("codebook", codebook)
        # Hidden (biased) moving averages; divided by 1 - decay^steps when used.
        self.register_buffer("ema_count_hidden", torch.zeros(num_codes))
        self.register_buffer("ema_sum_hidden", torch.zeros(num_codes, dim))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def code_indices(self, flat):
        """Nearest code (squared L2) for each row of flat [N, dim]."""
        codebook = self.codebook.to(flat.dtype)
        distances = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
                     - 2.0 * flat @ codebook.t())
        return distances.argmin(dim=1)

    def lookup(self, codes):
        """Codebook vectors for integer codes of any shape."""
        return F.embedding(codes, self.codebook)

    @torch.no_grad()
    def _ema_update(self, flat, codes):
        one_hot = F.one_hot(codes, self.num_codes).to(flat.dtype)
        counts = one_hot.sum(0)
        sums = one_hot.t() @ flat
        if dist.is_available() and dist.is_initialized():
            # Data-parallel replicas see different batches; pool the statistics so every
            # replica applies the same update (the one the global batch implies).
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_steps += 1
        # A tensor, not a Python float: no host sync and no graph break under torch.compile.
        correction = 1.0 - self.decay ** self.ema_steps.double()
        self.ema_count_hidden.sub_((self.ema_count_hidden - counts) * (1.0 - self.decay))
        self.ema_sum_hidden.sub_((self.ema_sum_hidden - sums) * (1.0 - self.decay))
        correction = correction.to(flat.dtype)
        dead = None
        if self.dead_code_threshold > 0:
            dead, rows = self._dead_codes(flat, correction)
        count = self.ema_count_hidden / correction
        total = count.sum()
        # Laplace smoothing keeps unused codes from dividing by zero.
        count = (count + self.eps) / (total + self.num_codes * self.eps) * total
        if dead is None:
            self.codebook.copy_((self.ema_sum_hidden / correction) / count.unsqueeze(1))
            return
        # A re-seeded code's sum is its vector times its (smoothed) count, so the formula
        # below gives back the vector, and later steps average from there.
        self.ema_sum_hidden.copy_(torch.where(dead, rows * (count * correction).unsqueeze(1),
                                              self.ema_sum_hidden))
        self.codebook.copy_(torch.where(dead, rows, (self.ema_sum_hidden / correction)
                                        / count.unsqueeze(1)))

    def _dead_codes(self, flat, correction):
        """Find the codes used less than the threshold and reset their counts to it.

        Returns (dead [num_codes, 1] bool, rows [num_codes, dim]): rows[i] is the encoder
        output that code i restarts from when dead. One row is drawn per code every step
        (torch's generator, so runs are reproducible and resumes exact), whether or not
        any code is dead: no host sync, and a fixed use of the random stream.
        """
        dead = (self.ema_count_hidden / correction) < self.dead_code_threshold
        pick = torch.randint(flat.shape[0], (self.num_codes,), device=flat.device)
        rows = flat[pick].to(self.codebook.dtype)
        if dist.is_available() and dist.is_initialized():
            # Every replica must restart from the same vectors: rank 0's choice.
            dist.broadcast(rows, src=0)
        self.ema_count_hidden.copy_(torch.where(dead, self.dead_code_threshold * correction,
                                                self.ema_count_hidden))
        return dead.unsqueeze(1), rows

    @property
    def slots(self) -> int:
        """Codes in all."""
        return self.num_codes

    def slot_indices(self, codes):
        """One number per code, 0..slots-1 (for a single codebook, the codes themselves)."""
        return codes

    def forward(self, x):
        """x [..., dim] -> (quantised with straight-through gradient, commitment loss,
        codes [...], perplexity of this batch's code usage)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            flat = x.reshape(-1, self.dim)
            codes = self.code_indices(flat)
            quantized = self.lookup(codes).to(x.dtype).view_as(x)
            if self.training:
                # The output uses the codebook as it was before this update.
                self._ema_update(flat.detach(), codes)
            loss = self.commitment * F.mse_loss(x, quantized.detach())
            quantized = x + (quantized - x).detach()
            usage = torch.bincount(codes, minlength=self.num_codes).to(x.dtype) / codes.numel()
            perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        return quantized, loss, codes.view(x.shape[:-1]), perplexity


class ProductQuantizer(nn.Module):
    """One EMA codebook per latent slice (product quantisation; beyond the paper).

    The latent [..., slices * slice_dim] is cut into its element slices and slice k is
    quantised by codebook k alone: each has its own commitment term, moving averages and
    dead-code restart, and nothing mixes the slices, so slice k's code says nothing about
    slice j's input. Codes are [..., slices]. The commitment loss is the mean of the slices'
    terms, which equals the joint quantiser's loss on the same quantised vectors.
    """

    def __init__(self, num_codes: int, slices: int, slice_dim: int, commitment: float = 0.25,
                 decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.0):
        super().__init__()
        self.num_codes, self.slices, self.slice_dim = num_codes, slices, slice_dim
        self.dim = slices * slice_dim
        self.books = nn.ModuleList(EMAVectorQuantizer(num_codes, slice_dim, commitment, decay, eps,
                                                      dead_code_threshold) for _ in range(slices))

    @property
    def codebook(self) -> torch.Tensor:
        """[slices, num_codes, slice_dim]: every codebook (what identifies a trained model)."""
        return torch.stack([book.codebook for book in self.books])

    def _split(self, x):
        return x.reshape(*x.shape[:-1], self.slices, self.slice_dim).unbind(-2)

    def code_indices(self, flat):
        """Nearest code of each slice for each row of flat [N, dim] -> [N, slices]."""
        return torch.stack([book.code_indices(part) for book, part in zip(self.books, self._split(flat))], -1)

    def lookup(self, codes):
        """Vectors [..., dim] of codes [..., slices]."""
        return torch.cat([book.lookup(codes[..., k]) for k, book in enumerate(self.books)], -1)

    @property
    def slots(self) -> int:
        """Codes in all: every (slice, code) pair."""
        return self.slices * self.num_codes

    def slot_indices(self, codes):
        """One number per (slice, code) pair, 0..slots-1, for counting code usage: [..., slices]."""
        return codes + self.num_codes * torch.arange(self.slices, device=codes.device)

    def forward(self, x):
        """x [..., dim] -> (quantised with straight-through gradient, commitment loss,
        codes [..., slices], perplexity of this batch's code usage, the mean over slices)."""
        outputs = [book(part) for book, part in zip(self.books, self._split(x))]
        quantized = torch.cat([out[0] for out in outputs], -1)
        loss = torch.stack([out[1] for out in outputs]).mean()
        codes = torch.stack([out[2] for out in outputs], -1)
        perplexity = torch.stack([out[3] for out in outputs]).mean()
        return quantized, loss, codes, perplexity

"""RQ-VAE: the residual-quantized autoencoder of TIGER (Rajput et al. 2023), with an optional collaborative term
as in LETTER (Wang et al. 2024), behind the `Quantizer` interface (fit, encode, save, load).

An MLP encoder maps an item vector x [D] to a latent z [d]; L residual codebooks of K codes quantize it (level l
takes the code nearest the residual r_l the levels before it left; z_q is the sum of the chosen codes) and an MLP
decoder reconstructs x from z_q. The loss of a batch:

    |x - dec(z_q)|^2                                        reconstruction (mean over dimensions)
    + sum_l |sg(r_l) - e_l|^2 + beta |r_l - sg(e_l)|^2      codebook and commitment terms (beta 0.25, the paper's)
    + collab_weight x InfoNCE(W z_q, c)                     the item's collaborative vector c as the positive
                                                            among the batch's (cosine / 0.1)
    + diversity_weight x sum_l (log K - H(mean_batch softmax(-|r_l - e|^2)))   spread use over the codes

and gradients pass the quantizer by the straight-through estimator, z_q = z + sg(q - z).

What keeps it from the failures of public RQ-VAE code (collapsed codebooks, exploding losses, 10-30% collisions):
- the first tenth of the steps trains a plain autoencoder (no quantizer), then every codebook starts as residual
  k-means of the encoder's latents of all items, so every code is in use when quantized training starts (k-means
  on an untrained encoder's latents, which barely differ from item to item, gives codebooks that collapse);
- a code no item chose during the last `reseed_every` steps is re-seeded with the residual of a random item
  of the batch at its level;
- gradients are clipped (norm 1), and a loss that is no longer finite stops the fit with an error rather than
  writing NaN codes;
- the fit is deterministic for a seed (one generator for initialisation, batches and re-seeding).

Codebook health (per level usage and perplexity, the collision rate before the extra level, the largest
collision group, the reconstruction error) is measured on all items every `log_every` steps and at the end:
`history` and `stats`, which the quantize stage logs, writes and plots.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genrec.errors import GenrecError
from genrec.files import write_bytes
from genrec.ids.rqkmeans import codebook_health, fit_rq_kmeans

logger = logging.getLogger(__name__)

WEIGHTS, SHAPE = "rqvae.safetensors", "rqvae.json"


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAENet(nn.Module):
    """Encoder, L codebooks [K, d] and decoder."""

    def __init__(self, *, dim: int, hidden_dim: int, latent_dim: int, num_levels: int, codebook_size: int,
                 collab_dim: int = 0) -> None:
        super().__init__()
        self.encoder = mlp([dim, hidden_dim, hidden_dim // 2, latent_dim])
        self.decoder = mlp([latent_dim, hidden_dim // 2, hidden_dim, dim])
        self.codebooks = nn.Parameter(torch.zeros(num_levels, codebook_size, latent_dim))  # [L, K, d]
        self.collab_proj = nn.Linear(latent_dim, collab_dim, bias=False) if collab_dim else None
        self.register_buffer("mean", torch.zeros(dim))  # [D] inputs are standardised per dimension
        self.register_buffer("scale", torch.ones(dim))  # [D]

    def standardise(self, x: Tensor) -> Tensor:
        """Item vectors share a large common part (all of a catalogue's texts read alike); the differences
        between items are what the codes must keep, so each dimension is centred and scaled to unit variance."""
        return (x - self.mean) / self.scale

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """z [B, d] -> codes [B, L], z_q [B, d] (sum of the chosen codes) and each level's residual [B, d]."""
        residual, codes, residuals = z, [], []
        q = torch.zeros_like(z)
        for level in range(self.codebooks.shape[0]):
            e = self.codebooks[level]  # [K, d]
            distance = (residual.detach() ** 2).sum(1, keepdim=True) - 2 * residual.detach() @ e.detach().T \
                + (e.detach() ** 2).sum(1)[None]  # [B, K]
            code = distance.argmin(1)
            residuals.append(residual)
            chosen = e[code]
            q = q + chosen
            residual = residual - chosen.detach()
            codes.append(code)
        return torch.stack(codes, 1), q, residuals


class RQVAE:
    """The RQ-VAE quantizer (see the module docstring). `fit` takes item vectors [N, D] (and, for the
    collaborative term, the items' collaborative vectors [N, Dc]) and returns their codes [N, L]."""

    def __init__(self, *, num_levels: int, codebook_size: int, latent_dim: int = 32, hidden_dim: int = 256,
                 steps: int = 3000, batch_size: int = 1024, lr: float = 1e-3, beta: float = 0.25,
                 collab_weight: float = 0.0, diversity_weight: float = 0.0, reseed_every: int = 100,
                 log_every: int = 500, seed: int = 0) -> None:
        self.num_levels, self.codebook_size = num_levels, codebook_size
        self.latent_dim, self.hidden_dim, self.steps, self.batch_size = latent_dim, hidden_dim, steps, batch_size
        self.lr, self.beta, self.collab_weight, self.diversity_weight = lr, beta, collab_weight, diversity_weight
        self.reseed_every, self.log_every, self.seed = reseed_every, log_every, seed
        self.net: RQVAENet | None = None
        self.stats: dict = {}
        self.history: list[dict] = []  # codebook health every log_every steps

    # ---- fitting ---------------------------------------------------------------------------------------
    def fit(self, x: np.ndarray, collab: np.ndarray | None = None) -> np.ndarray:
        """x [N, D] -> codes [N, L]; with `collab` [N, Dc] and collab_weight > 0, the collaborative term."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self._fit(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                             None if collab is None or self.collab_weight == 0 else
                             F.normalize(torch.from_numpy(np.ascontiguousarray(collab, dtype=np.float32)), dim=-1),
                             gen)

    def _fit(self, x: Tensor, collab: Tensor | None, gen: torch.Generator) -> np.ndarray:
        N, D = x.shape
        if N < self.codebook_size:
            raise GenrecError(f"{N} items cannot fill a codebook of {self.codebook_size} codes; lower "
                              f"quantize.codebook_size")
        net = RQVAENet(dim=D, hidden_dim=self.hidden_dim, latent_dim=self.latent_dim, num_levels=self.num_levels,
                       codebook_size=self.codebook_size, collab_dim=0 if collab is None else collab.shape[1])
        self.net = net
        net.mean.copy_(x.mean(0))
        net.scale.copy_(x.std(0).clamp(min=1e-6))
        x = net.standardise(x)  # [N, D] what the autoencoder reconstructs
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        B = min(self.batch_size, N)
        order, cursor = torch.randperm(N, generator=gen), 0

        def next_batch() -> Tensor:
            nonlocal order, cursor
            if cursor + B > N:
                order, cursor = torch.randperm(N, generator=gen), 0
            cursor += B
            return order[cursor - B : cursor]

        warmup = self.steps // 10
        for _ in range(warmup):  # a plain autoencoder first, so that the latents the codebooks start from mean something
            index = next_batch()
            loss = F.mse_loss(net.decoder(net.encoder(x[index])), x[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        self.init_codebooks(x)
        last_used = torch.full((self.num_levels, self.codebook_size), warmup, dtype=torch.long)  # last step chosen
        self.history = [self.health(x, step=warmup)]
        for step in range(warmup + 1, self.steps + 1):
            index = next_batch()
            loss, codes, residuals = self.loss(x[index], None if collab is None else collab[index])
            if not torch.isfinite(loss):
                raise GenrecError(f"the RQ-VAE loss became {float(loss)} at step {step}; lower quantize.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            for level in range(self.num_levels):
                last_used[level, codes[:, level]] = step
            if step % self.reseed_every == 0:
                self.reseed(last_used, step, residuals, gen)
            if step % self.log_every == 0 or step == self.steps:
                self.history.append(self.health(x, step=step))
                h = self.history[-1]
                logger.info("rqvae step %d/%d: usage %s, perplexity %s, collisions %.2f%% (largest group %d), "
                            "reconstruction %.5f", step, self.steps,
                            " ".join(f"{lv['usage']:.2f}" for lv in h["levels"]),
                            " ".join(f"{lv['perplexity']:.0f}" for lv in h["levels"]),
                            100 * h["collision_rate"], h["largest_group"], h["reconstruction_mse"])
        with torch.no_grad():
            codes = net.quantize(net.encoder(x))[0]
        self.stats = {k: self.history[-1][k] for k in ("reconstruction_mse", "quantization_mse")}
        return codes.numpy()

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """Residual k-means of the encoder's latents of every item: all codes in use from the first quantized step."""
        assert self.net is not None
        z = self.net.encoder(x)
        result = fit_rq_kmeans(z, num_levels=self.num_levels, codebook_size=self.codebook_size, iters=20,
                               seed=self.seed)
        self.net.codebooks.copy_(torch.stack(result.centroids))

    def loss(self, x: Tensor, collab: Tensor | None) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One batch's loss, its codes [B, L] and each level's residual [B, d] (see the module docstring)."""
        assert self.net is not None
        net = self.net
        z = net.encoder(x)
        codes, q, residuals = net.quantize(z)
        z_q = z + (q - z).detach()  # straight-through: the decoder's gradient reaches the encoder as is
        loss = F.mse_loss(net.decoder(z_q), x)
        for level, r in enumerate(residuals):
            e = net.codebooks[level][codes[:, level]]
            loss = loss + F.mse_loss(e, r.detach()) + self.beta * F.mse_loss(r, e.detach())
        if collab is not None and net.collab_proj is not None:
            pred = F.normalize(net.collab_proj(z_q), dim=-1)  # [B, Dc]
            logits = pred @ collab.T / 0.1  # [B, B]: the item's own collaborative vector is the positive
            loss = loss + self.collab_weight * F.cross_entropy(logits, torch.arange(len(x)))
        if self.diversity_weight:
            for level, r in enumerate(residuals):
                e = net.codebooks[level]
                p = torch.softmax(-torch.cdist(r, e) ** 2, dim=1).mean(0)  # [K] the batch's soft use of codes
                entropy = -(p * p.clamp(min=1e-12).log()).sum()
                loss = loss + self.diversity_weight * (math.log(self.codebook_size) - entropy)
        return loss, codes.detach(), [r.detach() for r in residuals]

    @torch.no_grad()
    def reseed(self, last_used: Tensor, step: int, residuals: list[Tensor], gen: torch.Generator) -> None:
        """Codes unused for `reseed_every` steps take the residual of a random item of the batch at their level."""
        assert self.net is not None
        for level in range(self.num_levels):
            dead = (last_used[level] <= step - self.reseed_every).nonzero()[:, 0]
            if len(dead):
                pick = torch.randint(0, residuals[level].shape[0], (len(dead),), generator=gen)
                self.net.codebooks[level, dead] = residuals[level][pick]
                last_used[level, dead] = step

    @torch.no_grad()
    def health(self, x: Tensor, *, step: int) -> dict:
        """Codebook health on every item (x standardised): per level usage and perplexity, collisions,
        reconstruction error."""
        assert self.net is not None
        z = self.net.encoder(x)
        codes, q, _ = self.net.quantize(z)
        h = codebook_health(codes.numpy(), self.codebook_size)
        return {"step": step, "levels": h["levels"], "collision_rate": 1.0 - h["unique_fraction"],
                "largest_group": h["largest_group"], "num_ids": h["num_ids"],
                "reconstruction_mse": float(F.mse_loss(self.net.decoder(q), x)),
                "quantization_mse": float(((z - q) ** 2).sum(1).mean())}

    # ---- using ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_tensor(self, x: Tensor) -> Tensor:
        """Codes [M, L] of raw item vectors [M, D] (standardised here as in fitting)."""
        assert self.net is not None
        return self.net.quantize(self.net.encoder(self.net.standardise(x)))[0]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """x [M, D] -> codes [M, L] with the fitted encoder and codebooks (items not seen at fit time too)."""
        if self.net is None:
            raise ValueError("RQVAE.encode before fit or load")
        return self.encode_tensor(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def save(self, directory: Path) -> None:
        assert self.net is not None
        directory = Path(directory)
        shape = {"dim": self.net.encoder[0].in_features, "hidden_dim": self.hidden_dim, "latent_dim": self.latent_dim,
                 "collab_dim": 0 if self.net.collab_proj is None else self.net.collab_proj.out_features}
        write_bytes(directory / SHAPE, json.dumps(shape).encode())
        tmp = directory / (WEIGHTS + ".tmp")
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        tmp.replace(directory / WEIGHTS)

    @classmethod
    def load(cls, directory: Path, *, num_levels: int, codebook_size: int) -> RQVAE:
        directory = Path(directory)
        shape = json.loads((directory / SHAPE).read_text())
        q = cls(num_levels=num_levels, codebook_size=codebook_size, latent_dim=shape["latent_dim"],
                hidden_dim=shape["hidden_dim"])
        q.net = RQVAENet(dim=shape["dim"], hidden_dim=shape["hidden_dim"], latent_dim=shape["latent_dim"],
                         num_levels=num_levels, codebook_size=codebook_size, collab_dim=shape["collab_dim"])
        q.net.load_state_dict(load_file(str(directory / WEIGHTS)))
        return q

"""Conditional VAE (Sohn et al. 2015): the label y enters both q(z|x, y) and p(x|z, y), so
sampling can be asked for a chosen class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.vae import VAE

LABEL_ENCODINGS = ("onehot", "embedding")


class CVAE(VAE):
    def __init__(self, *, label_encoding: str = "onehot", label_embed_dim: int = 16, **kwargs):
        if label_encoding not in LABEL_ENCODINGS:
            raise ValueError(f"unknown label_encoding {label_encoding!r}; choose {LABEL_ENCODINGS}")
        # condition_dim() is read while the parent builds the networks, so set these first.
        self.label_encoding, self.label_embed_dim = label_encoding, label_embed_dim
        self._num_classes = kwargs.get("num_classes", 10)
        super().__init__(**kwargs)
        if label_encoding == "embedding":
            self.label_embedding = nn.Embedding(self.num_classes, label_embed_dim)

    def condition_dim(self) -> int:
        return self._num_classes if self.label_encoding == "onehot" else self.label_embed_dim

    def condition(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("a CVAE needs labels: pass y (or labels=) with one class per image")
        if self.label_encoding == "onehot":
            return F.one_hot(y.long(), self.num_classes).float()
        return self.label_embedding(y.long())

    def preview_labels(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device) % self.num_classes

"""The churn network of models/src/churn.rs in plain PyTorch, trained the way
Encore trains it, to compare samples per second (benches/training.sh).

Same architecture (wide part with crossed categorical pairs, embeddings,
MLP 128-64 with dropout 0.1, cumulative softplus heads), same AdamW
settings, batch size, thread count and per-step loss read-back. AdamW is
torch's default implementation (a loop over the parameters); --fused uses
AdamW(fused=True), the one-kernel step Encore's optimiser calls
(models/src/optim.rs).

    python churn_train.py --rows 200000 --epochs 4 --batch-size 512 --threads 2
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class WideDeep(nn.Module):
    def __init__(self, numeric, cards, horizons, hidden=(128, 64), emb=8, dropout=0.1):
        super().__init__()
        self.cards = cards
        self.wide = nn.Linear(numeric, 1)
        self.pairs = [(i, j) for i in range(len(cards)) for j in range(i + 1, len(cards))]
        self.crosses = nn.ModuleList(nn.Embedding(cards[i] * cards[j], 1) for i, j in self.pairs)
        for c in self.crosses:
            nn.init.zeros_(c.weight)
        self.embeddings = nn.ModuleList(nn.Embedding(c, emb) for c in cards)
        for e in self.embeddings:
            nn.init.normal_(e.weight, 0.0, 0.1)
        layers, width = [], numeric + emb * len(cards)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            width = h
        self.hidden = nn.ModuleList(layers)
        self.out = nn.Linear(width, horizons)
        self.dropout = dropout
        self.register_buffer("mean", torch.zeros(numeric))
        self.register_buffer("std", torch.ones(numeric))

    def forward(self, numeric, categorical):
        # models/src/churn.rs squashes every numeric input, sign(x)·ln(1+|x|),
        # before standardising.
        z = (torch.sign(numeric) * torch.log1p(numeric.abs()) - self.mean) / self.std
        codes = [categorical[:, i].clamp(0, c - 1) for i, c in enumerate(self.cards)]
        wide = self.wide(z)
        for (i, j), cross in zip(self.pairs, self.crosses):
            wide = wide + cross(codes[i] * self.cards[j] + codes[j])
        x = torch.cat([z] + [e(c) for e, c in zip(self.embeddings, codes)], 1)
        for layer in self.hidden:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        raw = self.out(x) + wide
        heads = [raw[:, 0]]
        for k in range(1, raw.shape[1]):
            heads.append(heads[-1] + F.softplus(raw[:, k]))
        return torch.stack(heads, 1)


def rows(n, numeric, cards):
    x = torch.randn(n, numeric)
    categorical = torch.cat([torch.randint(c, (n, 1)) for c in cards], 1)
    logit = x[:, 0] * 1.5 - 1.0
    u = torch.rand(n)
    labels = torch.stack([(u < torch.sigmoid(logit + s)).float() for s in (-1.0, 0.0, 1.0)], 1)
    return x, categorical, labels


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--numeric", type=int, default=40)
    p.add_argument("--categories", default="8,5,4,12")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True), as Encore steps")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    cards = [int(c) for c in a.categories.split(",")]
    x, c, y = rows(a.rows, a.numeric, cards)
    vx, vc, vy = rows(a.rows // 10, a.numeric, cards)
    model = WideDeep(a.numeric, cards, 3)
    squashed = torch.sign(x) * torch.log1p(x.abs())
    model.mean.copy_(squashed.mean(0))
    std = squashed.std(0)
    model.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4, fused=a.fused or None)
    per_epoch = []
    for _ in range(a.epochs):
        model.train()
        started = time.perf_counter()
        perm = torch.randperm(a.rows)
        for start in range(0, a.rows, a.batch_size):
            idx = perm[start : start + a.batch_size]
            logits = model(x.index_select(0, idx), c.index_select(0, idx))
            loss = F.binary_cross_entropy_with_logits(logits, y.index_select(0, idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise SystemExit("diverged")
        per_epoch.append(a.rows / (time.perf_counter() - started))
        model.eval()
        with torch.no_grad():
            F.binary_cross_entropy_with_logits(model(vx, vc), vy).item()
    timed = per_epoch[1:] or per_epoch
    print(json.dumps({
        "engine": f"python torch {torch.__version__}",
        "rows": a.rows,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "fused": a.fused,
        "samples_per_second": statistics.median_high(timed),
        "per_epoch": per_epoch,
    }))


if __name__ == "__main__":
    main()

"""The two-tower model of models/src/recommend.rs in plain PyTorch, trained the
way Encore trains it, to compare samples per second (benches/training.sh).

Same towers (user id + mean history embedding -> MLP, item id + genre ->
MLP, 64 wide, hidden 128, L2-normalised), temperature 0.2, in-batch softmax
with the logQ correction, AdamW (lr 2e-3, weight decay 1e-5), same batch
size, thread count, synthetic pairs and per-step loss read-back.

    python recommend_train.py --rows 200000 --users 4000 --items 2000 --batch-size 1024 --threads 2
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class TwoTower(nn.Module):
    def __init__(self, users, items, genres, dim=64, hidden=128):
        super().__init__()
        self.user_id = nn.Embedding(users, dim)
        self.history = nn.Embedding(items, dim)
        self.item_id = nn.Embedding(items, dim)
        self.genre = nn.Embedding(genres, dim)
        for e in (self.user_id, self.history, self.item_id, self.genre):
            nn.init.normal_(e.weight, 0.0, 0.1)
        self.user_mlp = mlp(2 * dim, hidden, dim)
        self.item_mlp = mlp(2 * dim, hidden, dim)

    def users(self, ids, history):
        h = history.index_select(0, ids) @ self.history.weight
        x = torch.cat([self.user_id(ids), h], 1)
        return F.normalize(self.user_mlp(x), dim=1, eps=1e-6)

    def items(self, ids, genres):
        x = torch.cat([self.item_id(ids), self.genre(genres.index_select(0, ids))], 1)
        return F.normalize(self.item_mlp(x), dim=1, eps=1e-6)


def pairs(n, users, items):
    # The same xorshift stream as the Rust side (item ~ u^2: popular head).
    state = 0x2545F4914F6CDD1D
    mask = (1 << 64) - 1

    def nxt():
        nonlocal state
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        return (state >> 11) / float(1 << 53)

    u, i = [], []
    for _ in range(n):
        u.append(int(nxt() * users))
        i.append(int(nxt() * nxt() * items))
    return torch.tensor(u), torch.tensor(i)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="recommend")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--users", type=int, default=4000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    a, _ = p.parse_known_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    users, items = pairs(a.rows, a.users, a.items)
    genres = 1 + torch.arange(a.items) % 20
    history = torch.zeros(a.users, a.items)
    history[users, items] = 1.0
    history = history / history.sum(1, keepdim=True).clamp_min(1.0)
    freq = torch.bincount(items, minlength=a.items).float()
    log_q = (freq / a.rows).clamp_min(1e-9).log()
    model = TwoTower(a.users, a.items, 21)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    per_epoch = []
    for _ in range(a.epochs):
        started = time.perf_counter()
        perm = torch.randperm(a.rows)
        for start in range(0, a.rows, a.batch_size):
            idx = perm[start : start + a.batch_size]
            u, i = users.index_select(0, idx), items.index_select(0, idx)
            logits = model.users(u, history) @ model.items(i, genres).t() / 0.2 - log_q.index_select(0, i).unsqueeze(0)
            loss = F.cross_entropy(logits, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise SystemExit("diverged")
        per_epoch.append(a.rows / (time.perf_counter() - started))
        with torch.no_grad():
            model.users(torch.arange(a.users), history)
            model.items(torch.arange(a.items), genres)
    print(json.dumps({
        "engine": f"python torch {torch.__version__}",
        "model": "recommend",
        "rows": a.rows,
        "users": a.users,
        "items": a.items,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "samples_per_second": statistics.median_high(per_epoch[1:] or per_epoch),
        "per_epoch": per_epoch,
    }))


if __name__ == "__main__":
    main()

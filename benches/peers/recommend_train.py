"""The two-tower model of models/src/recommend.rs in plain PyTorch, trained the
way Encore trains it, to compare samples per second (benches/training.sh).

Same towers, 64 wide, hidden 128, embeddings initialised N(0, 0.1):
- user: cat[id embedding (64), mean of a history embedding over the user's
  first 200 distinct training items in training order (embedding_bag,
  mode=mean, indices and offsets built on the CPU per batch from the batch
  users' histories), standardised numeric user features (none in the bench
  data: F = 0), hour-slot embedding (7 rows, 8 wide), device embedding
  (max(devices, 1) = 1 row here, 8 wide)] -> Linear(2*64 + F + 2*8, 128) ->
  ReLU -> Linear(128, 64) -> L2-normalised;
- item: cat[id, genre and artist (1 row: no artists, every code 0)
  embeddings (64 each), log1p(pair count) standardised over items
  (population std)] -> Linear(3*64 + 1, 128) -> ReLU -> Linear(128, 64) ->
  L2-normalised.
The bench data has no pair context, so every pair trains with the unknown
context (hour slot 0, device 0). Per epoch: manual_seed(7 + epoch), randperm
of the pairs and the context-dropout rand draw on the CPU, then batches:
logits = u.i / 0.2 - logQ[item] (log of the item's share of the pairs,
clamped at 1e-9), cross entropy against the diagonal (in-batch negatives),
AdamW (lr 2e-3, weight decay 1e-5; torch's default implementation, or with
--fused the one-kernel step Encore's optimiser calls, models/src/optim.rs)
and the loss read back every step with a
NaN check. Same batch size, thread count and synthetic pairs as
benches/src/bin/train_throughput.rs; samples/s = pairs / timed epoch seconds
(steps only), median of the epochs after the first.

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

HOUR_SLOTS = 7
# RecommendConfig::default() in models/src/recommend.rs.
DIM, HIDDEN, CONTEXT_DIM = 64, 128, 8
LR, WEIGHT_DECAY, TEMPERATURE = 2e-3, 1e-5, 0.2
MAX_HISTORY, CONTEXT_DROPOUT, SEED = 200, 0.25, 7


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class TwoTower(nn.Module):
    def __init__(self, users, items, genres, artists, devices, features, dim=DIM, hidden=HIDDEN, context_dim=CONTEXT_DIM):
        super().__init__()
        # The layers of Towers::new.
        self.user_id = nn.Embedding(max(users, 1), dim)
        self.history = nn.Embedding(max(items, 1), dim)
        self.hour = nn.Embedding(HOUR_SLOTS, context_dim)
        self.device = nn.Embedding(max(devices, 1), context_dim)
        self.user_mlp = mlp(2 * dim + features + 2 * context_dim, hidden, dim)
        self.item_id = nn.Embedding(max(items, 1), dim)
        self.genre = nn.Embedding(max(genres, 1), dim)
        self.artist = nn.Embedding(max(artists, 1), dim)
        self.item_mlp = mlp(3 * dim + 1, hidden, dim)
        for e in (self.user_id, self.history, self.hour, self.device, self.item_id, self.genre, self.artist):
            nn.init.normal_(e.weight, 0.0, 0.1)

    def users(self, ids, bag_items, bag_offsets, numeric, slot, device):
        h = F.embedding_bag(bag_items, self.history.weight, bag_offsets, mode="mean")
        x = torch.cat([self.user_id(ids), h, numeric, self.hour(slot), self.device(device)], 1)
        return F.normalize(self.user_mlp(x), dim=1, eps=1e-6)

    def users_distinct(self, u, flat, starts, lengths, numeric, slot, device):
        """users() with the id embedding and history bag computed once per
        distinct user of the batch (--distinct)."""
        ids, back = torch.unique(u, return_inverse=True)
        bag_items, bag_offsets = bag(flat, starts, lengths, ids)
        h = F.embedding_bag(bag_items, self.history.weight, bag_offsets, mode="mean")
        fixed = torch.cat([self.user_id(ids), h], 1).index_select(0, back)
        x = torch.cat([fixed, numeric, self.hour(slot), self.device(device)], 1)
        return F.normalize(self.user_mlp(x), dim=1, eps=1e-6)

    def items(self, ids, genres, artists, popularity):
        x = torch.cat(
            [
                self.item_id(ids),
                self.genre(genres.index_select(0, ids)),
                self.artist(artists.index_select(0, ids)),
                popularity.index_select(0, ids),
            ],
            1,
        )
        return F.normalize(self.item_mlp(x), dim=1, eps=1e-6)


def histories(users, items, n_users, cap=MAX_HISTORY):
    """Each user's first `cap` distinct training items, as a flat tensor
    with per-user start and length (CSR)."""
    per_user = [[] for _ in range(n_users)]
    seen = set()
    for u, i in zip(users.tolist(), items.tolist()):
        if len(per_user[u]) < cap and (u, i) not in seen:
            seen.add((u, i))
            per_user[u].append(i)
    lengths = torch.tensor([len(h) for h in per_user])
    starts = torch.cumsum(lengths, 0) - lengths
    flat = torch.tensor([i for h in per_user for i in h], dtype=torch.long)
    return flat, starts, lengths


def bag(flat, starts, lengths, u):
    """The embedding-bag input of batch users `u`: their histories one after
    the other, and where each starts."""
    lens = lengths.index_select(0, u)
    offsets = torch.cumsum(lens, 0) - lens
    total = int(lens.sum())
    within = torch.arange(total) - offsets.repeat_interleave(lens)
    return flat.index_select(0, starts.index_select(0, u).repeat_interleave(lens) + within), offsets


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
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True), as Encore steps")
    p.add_argument("--distinct", action="store_true",
                   help="the Encore step's formulation: towers once per distinct user and item, "
                        "[B, U] logits with log-count columns, temperature and logQ fused into addmm")
    a, _ = p.parse_known_args()
    torch.set_num_threads(a.threads)
    users, items = pairs(a.rows, a.users, a.items)
    torch.manual_seed(SEED)
    genres = 1 + torch.arange(a.items) % 20
    artists = torch.zeros(a.items, dtype=torch.long)  # no artists: all code 0
    numeric = torch.zeros(a.users, 0)  # no user features: F = 0
    flat, starts, lengths = histories(users, items, a.users)
    freq = torch.bincount(items, minlength=a.items).float()
    log_count = freq.log1p()
    popularity = ((log_count - log_count.mean()) / log_count.std(unbiased=False).clamp_min(1e-6)).unsqueeze(1)
    log_q = (freq / a.rows).clamp_min(1e-9).log()
    model = TwoTower(a.users, a.items, genres=21, artists=0, devices=0, features=numeric.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=a.fused or None)
    per_epoch = []
    for epoch in range(1, a.epochs + 1):
        torch.manual_seed(SEED + epoch)
        perm = torch.randperm(a.rows)
        # The context-dropout draw (a pair keeps its context where >= CONTEXT_DROPOUT;
        # the bench pairs have none).
        torch.rand(a.rows)
        started = time.perf_counter()
        for start in range(0, a.rows, a.batch_size):
            idx = perm[start : start + a.batch_size]
            u, i = users.index_select(0, idx), items.index_select(0, idx)
            # Unknown context for every pair: hour slot 0, device 0.
            slot = torch.zeros(len(idx), dtype=torch.long)
            device = torch.zeros(len(idx), dtype=torch.long)
            if a.distinct:
                uv = model.users_distinct(u, flat, starts, lengths, numeric.index_select(0, u), slot, device)
                items_u, target, counts = torch.unique(i, return_inverse=True, return_counts=True)
                iv = model.items(items_u, genres, artists, popularity)
                bias = counts.float().log() - log_q.index_select(0, items_u)
                logits = torch.addmm(bias.unsqueeze(0), uv / TEMPERATURE, iv.t())
            else:
                bag_items, bag_offsets = bag(flat, starts, lengths, u)
                uv = model.users(u, bag_items, bag_offsets, numeric.index_select(0, u), slot, device)
                iv = model.items(i, genres, artists, popularity)
                logits = uv @ iv.t() / TEMPERATURE - log_q.index_select(0, i).unsqueeze(0)
                target = torch.arange(len(idx))
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise SystemExit("diverged")
        per_epoch.append(a.rows / (time.perf_counter() - started))
    print(json.dumps({
        "engine": f"python torch {torch.__version__}",
        "model": "recommend",
        "rows": a.rows,
        "users": a.users,
        "items": a.items,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "distinct": a.distinct,
        "fused": a.fused,
        "samples_per_second": statistics.median_high(per_epoch[1:] or per_epoch),
        "per_epoch": per_epoch,
    }))


if __name__ == "__main__":
    main()

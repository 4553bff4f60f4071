"""Export the benchmark model registry: `churn` and `recommend`, version 1 each.

TorchScript stand-ins of realistic size with seeded random weights, their
manifests, the online feature snapshots (`online/users.parquet`, and
`online/popular.parquet` for recommend) and `aliases.json` ({"production": 1}),
in the layout the Encore model server and the Python peer both read:

    DIR/<model>/1/model.pt, manifest.json, online/*.parquet
    DIR/<model>/aliases.json

Every file is written to a temporary name first and moved into place with
os.replace. Usage:

    python export_models.py --registry DIR [--users 100000] [--items 100000]
                            [--features 32] [--dim 64] [--seed 7]
"""

import argparse
import datetime
import json
import os
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEVICES = ["mobile", "desktop", "tablet", "tv", "car", "speaker"]
LIFECYCLES = ["new", "growing", "core"]
VALUE_TIERS = ["high", "mid", "low", "dormant"]
CHURN_PRIOR = {"churn_7d": 0.05, "churn_15d": 0.09, "churn_30d": 0.15}


class Churn(nn.Module):
    """Wide & deep churn model with monotone heads: p7 <= p15 <= p30."""

    def __init__(self, features: int):
        super().__init__()
        self.wide = nn.Linear(features, 1)
        self.deep = nn.Sequential(
            nn.Linear(features, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 3),
        )

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        z = self.deep(features) + self.wide(features)
        h7 = z[:, 0]
        h15 = h7 + F.softplus(z[:, 1])
        h30 = h15 + F.softplus(z[:, 2])
        return torch.sigmoid(h7), torch.sigmoid(h15), torch.sigmoid(h30)


class Recommend(nn.Module):
    """Two-tower retrieval with the (L2-normalised) item tower precomputed."""

    def __init__(self, features: int, dim: int, items: int, devices: int):
        super().__init__()
        self.user_tower = nn.Sequential(
            nn.Linear(features, 128),
            nn.ReLU(),
            nn.Linear(128, dim),
        )
        self.hour_embedding = nn.Embedding(25, dim)  # index hour + 1; 0 = unknown
        self.device_embedding = nn.Embedding(devices + 1, dim)  # 0 = unknown
        self.register_buffer(
            "item_embeddings", F.normalize(torch.randn(items, dim), dim=1)
        )
        self.register_buffer(
            "item_ids", torch.arange(items, dtype=torch.int64) + 1
        )

    @torch.jit.export
    def user_vectors(self, user_features: Tensor, hour: Tensor, device: Tensor) -> Tensor:
        """The user tower in context, L2-normalised: [N, dim]."""
        hour_index = torch.clamp(hour, -1, 23) + 1
        device_index = torch.clamp(device, 0, self.device_embedding.num_embeddings - 1)
        u = (
            self.user_tower(user_features)
            + self.hour_embedding(hour_index)
            + self.device_embedding(device_index)
        )
        return F.normalize(u, dim=1)

    @torch.jit.export
    def items(self) -> Tuple[Tensor, Tensor]:
        """What forward scores against: item vectors [M, dim] and ids [M]."""
        return self.item_embeddings, self.item_ids

    def forward(
        self, user_features: Tensor, hour: Tensor, device: Tensor, k: Tensor
    ) -> Tuple[Tensor, Tensor]:
        u = self.user_vectors(user_features, hour, device)
        scores = u @ self.item_embeddings.t()
        top_k = min(int(k[0].item()), self.item_embeddings.size(0))
        top = torch.topk(scores, top_k, dim=1)
        return self.item_ids[top.indices], top.values


# --- atomic file writers ---------------------------------------------------


def _tmp(path: str) -> str:
    return os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}"
    )


def write_json(path: str, value) -> None:
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_parquet(path: str, table: pa.Table) -> None:
    tmp = _tmp(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_module(path: str, module: nn.Module) -> None:
    tmp = _tmp(path)
    torch.jit.save(module, tmp)
    os.replace(tmp, path)


# --- models ------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def feature_names(n: int) -> List[str]:
    return [f"f{i}" for i in range(n)]


def users_table(users: int, features: int, rng: np.random.Generator) -> dict:
    columns = {"user_id": pa.array(np.arange(1, users + 1, dtype=np.int64))}
    matrix = rng.standard_normal((users, features), dtype=np.float32)
    for i, name in enumerate(feature_names(features)):
        columns[name] = pa.array(matrix[:, i])
    return columns


def export_churn(root: str, args) -> str:
    version_dir = os.path.join(root, "churn", "1")
    os.makedirs(os.path.join(version_dir, "online"), exist_ok=True)

    torch.manual_seed(args.seed)
    module = torch.jit.script(Churn(args.features).eval())
    write_module(os.path.join(version_dir, "model.pt"), module)

    rng = np.random.default_rng(args.seed)
    columns = users_table(args.users, args.features, rng)
    index = np.arange(args.users)
    columns["lifecycle"] = pa.array(np.array(LIFECYCLES)[index % len(LIFECYCLES)])
    columns["value_tier"] = pa.array(np.array(VALUE_TIERS)[index % len(VALUE_TIERS)])
    write_parquet(os.path.join(version_dir, "online", "users.parquet"), pa.table(columns))

    manifest = {
        "name": "churn",
        "version": 1,
        "kind": "churn",
        "created_at": now(),
        "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, args.features]}],
        "outputs": [
            {"name": name, "dtype": "FP32", "shape": [-1]} for name in CHURN_PRIOR
        ],
        "features": feature_names(args.features),
        "prior": CHURN_PRIOR,
        "horizons": [7, 15, 30],
        "metrics": {},
        "note": "benchmark stand-in with random weights",
    }
    write_json(os.path.join(version_dir, "manifest.json"), manifest)
    write_json(os.path.join(root, "churn", "aliases.json"), {"production": 1})
    return version_dir


def popular_table(items: int, rng: np.random.Generator) -> pa.Table:
    """Overall top 500 plus a top 100 per device, Zipf-like scores."""

    def zipf(n: int) -> np.ndarray:
        return (1000.0 / np.arange(1, n + 1) ** 1.1).astype(np.float32)

    item_ids, scores, devices = [], [], []
    n = min(500, items)
    item_ids.append(rng.permutation(items)[:n] + 1)
    scores.append(zipf(n))
    devices += [None] * n
    for device in DEVICES:
        n = min(100, items)
        item_ids.append(rng.permutation(items)[:n] + 1)
        scores.append(zipf(n))
        devices += [device] * n
    rows = len(devices)
    return pa.table(
        {
            "item_id": pa.array(np.concatenate(item_ids).astype(np.int64)),
            "score": pa.array(np.concatenate(scores)),
            "hour": pa.nulls(rows, type=pa.int32()),
            "device": pa.array(devices, type=pa.string()),
        }
    )


def export_recommend(root: str, args) -> str:
    version_dir = os.path.join(root, "recommend", "1")
    os.makedirs(os.path.join(version_dir, "online"), exist_ok=True)

    torch.manual_seed(args.seed + 1)
    module = Recommend(args.features, args.dim, args.items, len(DEVICES)).eval()
    write_module(os.path.join(version_dir, "model.pt"), torch.jit.script(module))

    rng = np.random.default_rng(args.seed + 1)
    write_parquet(
        os.path.join(version_dir, "online", "users.parquet"),
        pa.table(users_table(args.users, args.features, rng)),
    )
    write_parquet(
        os.path.join(version_dir, "online", "popular.parquet"),
        popular_table(args.items, rng),
    )

    manifest = {
        "name": "recommend",
        "version": 1,
        "kind": "recommend",
        "created_at": now(),
        "inputs": [
            {"name": "user_features", "dtype": "FP32", "shape": [-1, args.features]},
            {"name": "hour", "dtype": "INT64", "shape": [-1]},
            {"name": "device", "dtype": "INT64", "shape": [-1]},
            {"name": "k", "dtype": "INT64", "shape": [1]},
        ],
        "outputs": [
            {"name": "item_ids", "dtype": "INT64", "shape": [-1, -1]},
            {"name": "scores", "dtype": "FP32", "shape": [-1, -1]},
        ],
        "features": feature_names(args.features),
        "devices": DEVICES,
        "catalogue_size": args.items,
        "note": "benchmark stand-in with random weights: two-tower retrieval, "
        "item embeddings inside the module",
    }
    write_json(os.path.join(version_dir, "manifest.json"), manifest)
    write_json(os.path.join(root, "recommend", "aliases.json"), {"production": 1})
    return version_dir


# --- verification ----------------------------------------------------------


def verify(root: str, args) -> None:
    table = pq.read_table(
        os.path.join(root, "churn", "1", "online", "users.parquet"),
        columns=feature_names(args.features),
    ).slice(0, 4)
    batch = torch.from_numpy(
        np.stack([c.to_numpy() for c in table.columns], axis=1).astype(np.float32)
    )
    n = batch.shape[0]

    churn = torch.jit.load(os.path.join(root, "churn", "1", "model.pt"), map_location="cpu")
    with torch.inference_mode():
        p7, p15, p30 = churn(batch)
    for p in (p7, p15, p30):
        assert p.shape == (n,) and p.dtype == torch.float32, p
    assert bool((p7 <= p15).all()) and bool((p15 <= p30).all()), (p7, p15, p30)
    print(f"churn: {n} users, p7={p7.tolist()}, p30={p30.tolist()}")

    recommend = torch.jit.load(
        os.path.join(root, "recommend", "1", "model.pt"), map_location="cpu"
    )
    k = 10
    hour = torch.tensor([-1, 0, 12, 23][:n], dtype=torch.int64)
    device = torch.tensor([0, 1, 3, 6][:n], dtype=torch.int64)
    with torch.inference_mode():
        ids, scores = recommend(batch, hour, device, torch.tensor([k], dtype=torch.int64))
    assert ids.shape == (n, k) and ids.dtype == torch.int64, ids
    assert scores.shape == (n, k) and scores.dtype == torch.float32, scores
    assert bool((ids >= 1).all()) and bool((ids <= args.items).all()), ids
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), scores
    print(f"recommend: {n} users, top-{k} of user 1: {ids[0].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="registry root directory")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if min(args.users, args.items, args.features, args.dim) < 1:
        parser.error("--users, --items, --features and --dim must be positive")

    root = os.path.abspath(args.registry)
    os.makedirs(root, exist_ok=True)
    for version_dir in (export_churn(root, args), export_recommend(root, args)):
        size = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(version_dir)
            for f in files
        )
        print(f"wrote {version_dir} ({size / 1e6:.1f} MB)")
    verify(root, args)
    print(
        f"registry {root}: churn:1 and recommend:1 (production), "
        f"{args.users} users, {args.items} items, {args.features} features, dim {args.dim}"
    )


if __name__ == "__main__":
    main()

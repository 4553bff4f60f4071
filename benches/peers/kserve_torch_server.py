"""Python peer for the serving benchmark: a KServe v2 gRPC server for the
`churn` and `recommend` TorchScript models of a registry written by
export_models.py, the way a Python team would serve them (grpcio thread pool,
torch.jit, pyarrow/numpy feature lookup), speaking the same request contract
as the Encore model server:

- churn: `user_id` INT64 [N] (or `features` FP32 [N, F]) ->
  churn_<d>d FP32 [N] per horizon, risk_tier BYTES [N], fallback BOOL [N].
- recommend: `user_id` INT64 [N], optional `k` INT32 [1] (default 10),
  `hour` INT32 [N] or [1], `device` BYTES [N] or [1] ->
  item_ids INT64 [N, k], scores FP32 [N, k], fallback BOOL [N].

Usage: python kserve_torch_server.py --registry DIR --port PORT
                                     [--workers 8] [--torch-threads 1]
"""

import argparse
import json
import math
import os
import signal
import struct
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tritonclient.grpc import service_pb2, service_pb2_grpc

DEFAULT_K = 10
MAX_K = 500
RISK_HIGH, RISK_MEDIUM = 0.7, 0.3

# KServe datatype -> (little-endian numpy dtype, typed contents field).
NUMERIC = {
    "FP32": ("<f4", "fp32_contents"),
    "INT64": ("<i8", "int64_contents"),
    "INT32": ("<i4", "int_contents"),
}


class RequestError(Exception):
    """A request the server answers with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class LoadedModel:
    """One model version: TorchScript module, manifest and online snapshot."""

    def __init__(self, registry: str, name: str, version: int = 1):
        model_dir = os.path.join(registry, name)
        version_dir = os.path.join(model_dir, str(version))
        with open(os.path.join(version_dir, "manifest.json")) as f:
            self.manifest = json.load(f)
        aliases_path = os.path.join(model_dir, "aliases.json")
        aliases = {}
        if os.path.exists(aliases_path):
            with open(aliases_path) as f:
                aliases = json.load(f)
        # Version selectors that reach this version: "" (production), the
        # number, and every alias pointing at it.
        self.selectors = {"", str(version)} | {a for a, v in aliases.items() if v == version}
        self.name = name
        self.version = str(version)
        self.kind = self.manifest["kind"]
        self.module = torch.jit.load(os.path.join(version_dir, "model.pt"), map_location="cpu")
        self.module.eval()

        self.features = [
            f if isinstance(f, str) else f["name"] for f in self.manifest["features"]
        ]
        users = pq.read_table(
            os.path.join(version_dir, "online", "users.parquet"),
            columns=["user_id"] + self.features,
        )
        user_ids = users.column("user_id").to_numpy()
        self.rows = {int(u): i for i, u in enumerate(user_ids)}
        self.matrix = np.ascontiguousarray(
            np.stack(
                [
                    users.column(f).cast(pa.float32()).fill_null(0).to_numpy()
                    for f in self.features
                ],
                axis=1,
            ),
            dtype=np.float32,
        )

        if self.kind == "churn":
            self.outputs = [o["name"] for o in self.manifest["outputs"]]
            self.prior = np.array(
                [self.manifest.get("prior", {}).get(o, math.nan) for o in self.outputs],
                dtype=np.float32,
            )
            days = [int(o[len("churn_") : -1]) for o in self.outputs]
            self.longest = days.index(max(days))
        elif self.kind == "recommend":
            self.devices = {d: i + 1 for i, d in enumerate(self.manifest.get("devices", []))}
            self.popular = {}
            popular_path = os.path.join(version_dir, "online", "popular.parquet")
            if os.path.exists(popular_path):
                table = pq.read_table(popular_path)
                hours = (
                    table.column("hour").to_pylist()
                    if "hour" in table.column_names
                    else [None] * table.num_rows
                )
                devices = (
                    table.column("device").to_pylist()
                    if "device" in table.column_names
                    else [None] * table.num_rows
                )
                for item, score, hour, device in zip(
                    table.column("item_id").to_pylist(),
                    table.column("score").to_pylist(),
                    hours,
                    devices,
                ):
                    key = (-1 if hour is None else hour, device or "")
                    self.popular.setdefault(key, []).append((item, score))
                for items in self.popular.values():
                    items.sort(key=lambda pair: (-pair[1], pair[0]))
        else:
            raise ValueError(f"{name}: unsupported model kind '{self.kind}'")

    def lookup(self, user_ids: np.ndarray):
        """Snapshot rows of known users and a per-request 'unknown' mask."""
        rows = [self.rows.get(int(u)) for u in user_ids]
        fallback = np.array([r is None for r in rows], dtype=bool)
        known_rows = [r for r in rows if r is not None]
        return self.matrix[known_rows], fallback

    def popular_for(self, hour: int, device: str):
        for key in ((hour, device), (hour, ""), (-1, device), (-1, "")):
            if key in self.popular:
                return self.popular[key]
        return []


# --- request decoding --------------------------------------------------------


def decode(tensor, raw, spec_shape, dtype):
    """Values of one input: datatype, shape and element count checked."""
    name = tensor.name
    if tensor.datatype != dtype:
        raise invalid(f"input '{name}': datatype {tensor.datatype}, the model expects {dtype}")
    shape = list(tensor.shape)
    if len(shape) != len(spec_shape) or any(
        got < 0 or (want >= 0 and got != want) for got, want in zip(shape, spec_shape)
    ):
        raise invalid(f"input '{name}': shape {shape} does not fit the model's {spec_shape}")
    count = math.prod(shape)
    if dtype == "BYTES":
        if raw is None:
            values = list(tensor.contents.bytes_contents)
        else:
            values, offset = [], 0
            while offset < len(raw):
                if offset + 4 > len(raw):
                    raise invalid(f"input '{name}': truncated BYTES length prefix")
                (length,) = struct.unpack_from("<I", raw, offset)
                offset += 4
                if offset + length > len(raw):
                    raise invalid(f"input '{name}': BYTES element claims {length} bytes")
                values.append(raw[offset : offset + length])
                offset += length
        if len(values) != count:
            raise invalid(f"input '{name}': {len(values)} values for a shape of {count} elements")
        return values
    np_dtype, field = NUMERIC[dtype]
    if raw is None:
        values = np.array(getattr(tensor.contents, field), dtype=np_dtype)
    else:
        if len(raw) != count * np.dtype(np_dtype).itemsize:
            raise invalid(f"input '{name}': {len(raw)} raw bytes for {count} elements of {dtype}")
        values = np.frombuffer(raw, dtype=np_dtype)
    if values.size != count:
        raise invalid(f"input '{name}': {values.size} values for a shape of {count} elements")
    if dtype == "FP32" and not np.isfinite(values).all():
        raise invalid(f"input '{name}' holds NaN or infinity")
    return values.reshape(shape)


def per_row(name, values, n, default):
    """An optional [N] input, or one value broadcast to N rows."""
    if len(values) == 0:
        return [default] * n
    if len(values) == 1:
        return [values[0]] * n
    if len(values) == n:
        return list(values)
    raise invalid(f"input '{name}' has {len(values)} values for {n} users (give 1 or {n})")


def bytes_tensor(values) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# --- the service -------------------------------------------------------------

CHURN_INPUTS = {"user_id": ("INT64", [-1]), "features": ("FP32", [-1, -1])}
RECOMMEND_INPUTS = {
    "user_id": ("INT64", [-1]),
    "k": ("INT32", [1]),
    "hour": ("INT32", [-1]),
    "device": ("BYTES", [-1]),
}


class KserveService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models):
        self.models = models

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        model = self.models.get(request.name)
        ready = model is not None and request.version in model.selectors
        return service_pb2.ModelReadyResponse(ready=ready)

    def ModelInfer(self, request, context):
        try:
            return self.infer(request)
        except RequestError as e:
            context.abort(e.code, str(e))

    def infer(self, request):
        model = self.models.get(request.model_name)
        if model is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"model '{request.model_name}' is not loaded"
            )
        if request.model_version not in model.selectors:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"version '{request.model_version}' of model '{model.name}' is not loaded",
            )
        specs = CHURN_INPUTS if model.kind == "churn" else RECOMMEND_INPUTS
        raws = request.raw_input_contents
        if raws and len(raws) != len(request.inputs):
            raise invalid(f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs")
        inputs = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.name not in specs:
                raise invalid(
                    f"unknown input '{tensor.name}' for model '{model.name}' "
                    f"(inputs: {list(specs)})"
                )
            if tensor.name in inputs:
                raise invalid(f"input '{tensor.name}' is given twice")
            dtype, shape = specs[tensor.name]
            if tensor.name == "features":
                shape = [-1, len(model.features)]
            inputs[tensor.name] = decode(tensor, raws[i] if raws else None, shape, dtype)

        if model.kind == "churn":
            outputs = self.churn(model, inputs)
        else:
            outputs = self.recommend(model, inputs)

        wanted = [o.name for o in request.outputs]
        names = [o[0] for o in outputs]
        for name in wanted:
            if name not in names:
                raise invalid(f"unknown output '{name}' for model '{model.name}' (outputs: {names})")
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        for name, datatype, shape, raw in outputs:
            if not wanted or name in wanted:
                response.outputs.add(name=name, datatype=datatype, shape=shape)
                response.raw_output_contents.append(raw)
        return response

    def churn(self, model, inputs):
        if "user_id" in inputs and "features" in inputs:
            raise invalid("give either 'user_id' or 'features', not both")
        if "user_id" in inputs:
            features, fallback = model.lookup(inputs["user_id"])
        elif "features" in inputs:
            features = np.array(inputs["features"])  # writable copy for torch
            fallback = np.zeros(len(features), dtype=bool)
        else:
            raise invalid("missing input: 'user_id' or 'features'")
        n = len(fallback)
        probabilities = np.repeat(model.prior[:, None], n, axis=1)
        if len(features):
            with torch.inference_mode():
                scored = model.module(torch.from_numpy(features))
            probabilities[:, ~fallback] = np.stack([t.numpy() for t in scored])
        longest = probabilities[model.longest]
        tiers = [
            b"high" if p >= RISK_HIGH else b"medium" if p >= RISK_MEDIUM else b"low"
            for p in longest
        ]
        outputs = [
            (name, "FP32", [n], probabilities[i].astype("<f4").tobytes())
            for i, name in enumerate(model.outputs)
        ]
        outputs.append(("risk_tier", "BYTES", [n], bytes_tensor(tiers)))
        outputs.append(("fallback", "BOOL", [n], fallback.astype(np.uint8).tobytes()))
        return outputs

    def recommend(self, model, inputs):
        if "user_id" not in inputs:
            raise invalid("missing input 'user_id'")
        user_ids = inputs["user_id"]
        n = len(user_ids)
        k = int(inputs["k"][0]) if "k" in inputs else DEFAULT_K
        if not 1 <= k <= MAX_K:
            raise invalid(f"input 'k' must be 1 to {MAX_K}, got {k}")
        hours = per_row("hour", [int(h) for h in inputs.get("hour", [])], n, -1)
        for h in hours:
            if not -1 <= h <= 23:
                raise invalid(f"hour must be 0 to 23, or -1 for unknown; got {h}")
        devices = per_row(
            "device",
            [d.decode("utf-8", errors="replace") for d in inputs.get("device", [])],
            n,
            "",
        )

        features, fallback = model.lookup(user_ids)
        item_ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        known = np.flatnonzero(~fallback)
        if len(known):
            hour = torch.tensor([hours[i] for i in known], dtype=torch.int64)
            device = torch.tensor(
                [model.devices.get(devices[i], 0) for i in known], dtype=torch.int64
            )
            with torch.inference_mode():
                ids, top = model.module(
                    torch.from_numpy(features),
                    hour,
                    device,
                    torch.tensor([k], dtype=torch.int64),
                )
            width = ids.shape[1]
            item_ids[known, :width] = ids.numpy()
            scores[known, :width] = top.numpy()
        for i in np.flatnonzero(fallback):
            popular = model.popular_for(hours[i], devices[i])[:k]
            for j, (item, score) in enumerate(popular):
                item_ids[i, j] = item
                scores[i, j] = score
        return [
            ("item_ids", "INT64", [n, k], item_ids.astype("<i8").tobytes()),
            ("scores", "FP32", [n, k], scores.astype("<f4").tobytes()),
            ("fallback", "BOOL", [n], fallback.astype(np.uint8).tobytes()),
        ]


def warm_up(models) -> None:
    """One small batch per model, so the first request is not the slow one."""
    service = KserveService(models)
    for model in models.values():
        ids = np.array(list(model.rows)[:2] + [-1], dtype=np.int64)
        if model.kind == "churn":
            service.churn(model, {"user_id": ids})
        else:
            service.recommend(model, {"user_id": ids})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="registry root (export_models.py)")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.torch_threads)
    models = {name: LoadedModel(args.registry, name) for name in ("churn", "recommend")}
    warm_up(models)

    max_message = 64 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", max_message),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KserveService(models), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    server.start()
    print(f"python kserve server listening on 127.0.0.1:{port}", flush=True)

    def stop(signum, frame):
        threading.Thread(target=lambda: server.stop(grace=1), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


if __name__ == "__main__":
    main()

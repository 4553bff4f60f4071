"""GPU check of what Encore exports and of its fused AdamW call, for a
machine with a GPU and a Python torch but no Rust toolchain (prepare the
models with scripts/gpu-check/prepare.sh; run from the repository root).

- every churn and recommend version in gpucheck/registry: loaded onto the GPU
  as the model server loads it (map_location), scored there and on the CPU,
  outputs compared; recommend's `user_vectors` / `items` too; forward timings
- gpucheck/bench/recommend.pt (100,000 items): the same, for timings
- the fused AdamW step exactly as models/cpp/fused_adamw.cpp makes it
  (steps as float tensors, parameters without a gradient left out), 20 steps
  on CUDA against torch.optim.AdamW

Writes one JSON object to $OUT/gpucheck.json (or /tmp). GPUCHECK_DEVICE=cpu
runs the same on the CPU, to try the script where there is no GPU."""
import json, os, time
import torch
import pyarrow.parquet as pq

R = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
if R["cuda"]:
    R["gpu"] = torch.cuda.get_device_name(0)
cuda = torch.device(os.environ.get("GPUCHECK_DEVICE", "cuda"))  # cpu: a dry run here
R["device"] = str(cuda)  # where "forward_us_*" were timed
REG = "gpucheck/registry"


def step(name, fn):
    try:
        R[name] = fn()
    except Exception as e:  # noqa: BLE001 - the point is to report it
        R[name] = {"error": f"{type(e).__name__}: {e}"[:600]}
    print(name, json.dumps(R[name])[:400], flush=True)


def features(kind, version, n):
    man = json.load(open(f"{REG}/{kind}/{version}/manifest.json"))
    names = [f["name"] if isinstance(f, dict) else f for f in man["features"]]
    t = pq.read_table(f"{REG}/{kind}/{version}/online/users.parquet").slice(0, n)
    cols = [torch.tensor(t.column(c).to_numpy(zero_copy_only=False), dtype=torch.float32) for c in names]
    return torch.stack(cols, 1)


def sync():
    if cuda.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps=200):
    for _ in range(20):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    out.sort()
    return round(out[len(out) // 2] * 1e6, 1)


def churn(version):
    def run():
        x = features("churn", version, 512)
        cpu = torch.jit.load(f"{REG}/churn/{version}/model.pt", map_location="cpu").eval()
        gpu = torch.jit.load(f"{REG}/churn/{version}/model.pt", map_location=cuda).eval()
        with torch.inference_mode():
            a = cpu(x)
            b = gpu(x.to(cuda)).cpu()
            r = {"rows": x.shape[0], "max_abs_diff": float((a - b).abs().max())}
            r["p7<=p15<=p30"] = bool((b[:, 0] <= b[:, 1] + 1e-6).all() and (b[:, 1] <= b[:, 2] + 1e-6).all())
            for n in (1, 256):
                xs = x[:n].to(cuda)
                r[f"forward_us_batch{n}"] = timed(lambda: gpu(xs))
        return r
    return run


def recommend(path, man_path, version=None):
    def run():
        man = json.load(open(man_path))
        width = man["inputs"][0]["shape"][1]
        if version is not None:
            x = features("recommend", version, 64)
        else:
            x = torch.randn(64, width)
        hour = torch.randint(-1, 24, (x.shape[0],))
        dev = torch.randint(0, 3, (x.shape[0],))
        k = torch.tensor([10])
        cpu = torch.jit.load(path, map_location="cpu").eval()
        gpu = torch.jit.load(path, map_location=cuda).eval()
        with torch.inference_mode():
            ia, sa = cpu(x, hour, dev, k)
            ib, sb = gpu(x.to(cuda), hour.to(cuda), dev.to(cuda), k.to(cuda))
            ib, sb = ib.cpu(), sb.cpu()
            r = {"rows": x.shape[0], "score_max_abs_diff": float((sa - sb).abs().max()),
                 "same_ids_share": float((ia == ib).float().mean())}
            if hasattr(gpu, "user_vectors"):
                u = gpu.user_vectors(x.to(cuda), hour.to(cuda), dev.to(cuda))
                vecs, ids = gpu.items()
                r["items"] = int(ids.shape[0])
                r["user_vectors_on"] = str(u.device)
                s2, i2 = torch.topk(u @ vecs.t(), 10, 1)
                r["forward_equals_user_vectors_at_items"] = bool(torch.equal(ids[i2].cpu(), ib))
            x1, h1, d1 = x[:1].to(cuda), hour[:1].to(cuda), dev[:1].to(cuda)
            r["forward_us_batch1"] = timed(lambda: gpu(x1, h1, d1, k.to(cuda)))
            x64, h64, d64 = x.to(cuda), hour.to(cuda), dev.to(cuda)
            r["forward_us_batch64"] = timed(lambda: gpu(x64, h64, d64, k.to(cuda)))
        return r
    return run


def fused_adamw():
    """What models/cpp/fused_adamw.cpp does, step for step, on CUDA, against
    torch.optim.AdamW (not fused, not foreach) over 20 steps."""
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (100, 8)]
    ref = [torch.randn(s, device=cuda, requires_grad=True) for s in shapes]
    ours = [p.detach().clone() for p in ref]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=1e-2, foreach=False, fused=False)
    m = [torch.zeros_like(p) for p in ours]
    v = [torch.zeros_like(p) for p in ours]
    steps = [torch.zeros((), dtype=torch.float32, device=cuda) for _ in ours]
    for i in range(20):
        grads = [torch.randn(s, device=cuda) for s in shapes]
        # the last parameter gets no gradient on odd steps (skipped, as in Rust)
        use = [True, True, i % 2 == 0]
        for p, g, u in zip(ref, grads, use):
            p.grad = g.clone() if u else None
        opt.step()
        idx = [j for j in range(3) if use[j]]
        s = [steps[j] for j in idx]
        torch._foreach_add_(s, 1)
        torch._fused_adamw_([ours[j] for j in idx], [grads[j] for j in idx], [m[j] for j in idx],
                            [v[j] for j in idx], [], s, lr=1e-2, beta1=0.9, beta2=0.999,
                            weight_decay=1e-2, eps=1e-8, amsgrad=False, maximize=False)
    return {"max_abs_diff": max(float((a.detach() - b).abs().max()) for a, b in zip(ref, ours)),
            "steps": [float(s) for s in steps]}


def versions(kind):
    folder = f"{REG}/{kind}"
    return sorted(int(v) for v in os.listdir(folder) if v.isdigit()) if os.path.isdir(folder) else []


if R["cuda"] or cuda.type == "cpu":
    for v in versions("churn"):
        step(f"churn_v{v}", churn(v))
    for v in versions("recommend"):
        step(f"recommend_v{v}", recommend(f"{REG}/recommend/{v}/model.pt", f"{REG}/recommend/{v}/manifest.json", v))
    if os.path.exists("gpucheck/bench/recommend.pt"):
        step("recommend_100k_items", recommend("gpucheck/bench/recommend.pt", "gpucheck/bench/recommend.json"))
    step("fused_adamw", fused_adamw)
out = os.environ.get("OUT", "/tmp")
json.dump(R, open(os.path.join(out, "gpucheck.json"), "w"), indent=1)
print(json.dumps(R, indent=1))

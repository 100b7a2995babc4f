"""A GPU self-check of the published recipes (about 5 minutes on one CUDA machine).

    python benchmarks/gpu_check.py            # CUDA when usable, else the CPU mode
    python benchmarks/gpu_check.py --cpu      # the CPU mode (seconds; what the smoke test runs)

Checks, each a JSON line and a row of the final markdown table:

1. ``frozen_bn_grad_<precision>``: gradients of :class:`o2f.models.backbone.ConvFrozenBN`
   (conv -> BatchNorm with frozen statistics -> ReLU as one autograd function) against the
   plain ``conv -> eval-mode BatchNorm2d -> relu`` modules, both under autocast in fp32 / bf16
   / fp16 and judged against a float64 reference: ours must be no worse than twice the plain
   modules' own error (plus a small floor).
2. ``train_r50_<precision>``: ``r50_1x`` (random weights) training steps on a fixed batch of
   2 synthetic 800x1333 images x 20 boxes, as the trainer runs them (autocast, a GradScaler
   for fp16, SGD): it/s after warm-up, peak CUDA memory, and whether every loss was finite.
3. ``ddp_first_step``: with 2+ GPUs, NCCL DDP (``gradient_as_bucket_view``, the trainer's
   settings) on 2 images per GPU against 1 GPU on the whole batch: the largest relative
   gradient difference of the first step (fp32, TF32 off).
4. ``host_syncs_per_step``: host synchronisations in one ``r50_1x`` training step (forward with
   targets + backward, 2 images x 20 boxes), counted by :func:`o2f.profiling.count_host_syncs`
   and, on CUDA, also as the warnings of ``torch.cuda.set_sync_debug_mode("warn")``.

Without a usable CUDA the table says so (naming why) and the CPU mode runs instead: the same
checks on the small ``demo`` model at 128x128 (fp32 / bf16, a few steps, a 2-process Gloo DDP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.workloads import make_images, make_targets  # noqa: E402
from o2f.builders import build_detector  # noqa: E402
from o2f.config import Config, load_config  # noqa: E402
from o2f.engine.distributed_setup import cuda_build, cuda_problem  # noqa: E402
from o2f.models.backbone import conv_frozen_bn  # noqa: E402

NUM_CLASSES = 80
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# relative-error floor of check 1 per precision (rounding of the autocast dtype)
GRAD_FLOOR = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-3}


def _row(name: str, device: str, value: Any, unit: str, ok: bool | None, **extra: Any) -> dict:
    row = {"name": name, "device": device, "value": value, "unit": unit, "ok": ok, **extra}
    print(json.dumps(row, default=str), flush=True)
    return row


# -- 1. ConvFrozenBN against eval-mode BatchNorm ---------------------------------------------
def frozen_bn_check(device: torch.device, precision: str, size: int = 32) -> dict:
    """Max relative gradient error (x, conv weight, BN weight and bias) of ConvFrozenBN and of
    the plain modules under ``precision`` autocast, against float64 plain modules. x is
    (4, 64, size, size), the conv 64 -> 128, 3x3."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(128)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
        bn.weight.copy_(torch.rand(128, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(128, generator=gen) * 0.1)
        bn.running_mean.copy_(torch.randn(128, generator=gen) * 0.2)
        bn.running_var.copy_(torch.rand(128, generator=gen) + 0.5)
    bn.eval()
    x0 = torch.randn(4, 64, size, size, generator=gen)
    upstream = torch.randn(4, 128, size, size, generator=gen)

    def grads(fused: bool, dtype: torch.dtype | None, wide: bool) -> list[torch.Tensor]:
        c, b = (m.to(device, torch.float64 if wide else torch.float32) for m in
                (_clone(conv), _clone(bn)))
        x = x0.to(device, c.weight.dtype, copy=True).requires_grad_()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = conv_frozen_bn(c, b, x, relu=True) if fused else F.relu(b(c(x)))
        (y.float() * upstream.to(device)).sum().backward()
        return [t.grad.double().cpu() for t in (x, c.weight, b.weight, b.bias)]

    ref = grads(False, None, wide=True)
    dtype = DTYPES[precision]
    ours, plain = grads(True, dtype, False), grads(False, dtype, False)
    err = max(_rel(a, r) for a, r in zip(ours, ref, strict=True))
    err_plain = max(_rel(a, r) for a, r in zip(plain, ref, strict=True))
    ok = math.isfinite(err) and err <= max(2 * err_plain, GRAD_FLOOR[precision])
    return _row(f"frozen_bn_grad_{precision}", device.type, err, "max rel err", ok,
                plain_modules=err_plain)


def _clone(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# -- 2. training steps ------------------------------------------------------------------------
def _config(small: bool) -> Config:
    if small:  # frozen BatchNorm statistics, as r50_1x (else DDP's batch statistics differ)
        return load_config("demo", ["model.backbone.pretrained=false",
                                    "model.backbone.norm_eval=true"])
    return load_config("r50_1x", ["model.backbone.pretrained=false"])


def _batch(device: torch.device, batch: int, height: int, width: int, num_gt: int = 20,
           seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    images = [im.to(device) for im in make_images(batch, height, width, seed)]
    targets = [{k: v.to(device) for k, v in t.items()}
               for t in make_targets(batch, height, width, num_gt, seed)]
    return images, targets


def train_check(device: torch.device, precision: str, small: bool, iters: int, warmup: int,
                height: int, width: int) -> dict:
    """``iters`` timed training steps (after ``warmup``) on one fixed batch of 2 images."""
    torch.manual_seed(0)
    model = build_detector(_config(small), NUM_CLASSES).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                          momentum=0.9)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    images, targets = _batch(device, 2, height, width)
    finite = torch.ones((), dtype=torch.bool, device=device)

    def step() -> None:
        nonlocal finite
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        finite = finite & torch.isfinite(torch.stack([v.detach().float()
                                                      for v in losses.values()])).all()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    ok = bool(finite.item())
    name = f"train_{'small' if small else 'r50'}_{precision}"
    return _row(name, device.type, iters / seconds, "it/s", ok, peak_mb=peak,
                finite_losses=ok, iters=iters, size=f"{height}x{width}", batch=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 3. DDP first step against one device ------------------------------------------------------
def _first_step_grads(model: nn.Module, images: list, targets: list) -> dict[str, torch.Tensor]:
    losses = model(images, targets)
    sum(losses.values()).backward()
    return {n: p.grad.detach().double().cpu() for n, p in
            (model.module if hasattr(model, "module") else model).named_parameters()
            if p.grad is not None}


def _ddp_worker(rank: int, world: int, port: int, small: bool, size: tuple[int, int],
                ref_file: str, out_file: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = not small or torch.cuda.is_available() and os.environ.get("O2F_CHECK_CPU") != "1"
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_detector(_config(small), NUM_CLASSES).to(device).train()
        ddp = DistributedDataParallel(model, device_ids=[rank] if cuda else None,
                                      gradient_as_bucket_view=True)
        images, targets = _batch(device, 2 * world, *size)
        grads = _first_step_grads(ddp, images[2 * rank:2 * rank + 2],
                                  targets[2 * rank:2 * rank + 2])
        if rank == 0:
            ref = torch.load(ref_file, weights_only=True)
            err = max(_rel(grads[n], g) for n, g in ref.items())
            Path(out_file).write_text(json.dumps({"err": err, "params": len(ref)}))
    finally:
        dist.destroy_process_group()


def ddp_check(device: torch.device, small: bool, world: int, size: tuple[int, int]) -> dict:
    """``world`` processes x 2 images (NCCL on GPUs, Gloo in the CPU mode) against one
    process on the ``2 x world`` images: the largest relative first-step gradient difference
    over the parameters."""
    import socket

    import torch.multiprocessing as mp

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = build_detector(_config(small), NUM_CLASSES).to(device).train()
    images, targets = _batch(device, 2 * world, *size)
    ref = _first_step_grads(model, images, targets)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ref_file, out_file = f"{tmp}/ref.pt", f"{tmp}/out.json"
        torch.save(ref, ref_file)
        mp.start_processes(_ddp_worker, args=(world, port, small, size, ref_file, out_file),
                           nprocs=world, join=True, start_method="spawn")
        out = json.loads(Path(out_file).read_text())
    backend = "nccl" if device.type == "cuda" else "gloo"
    return _row("ddp_first_step", device.type, out["err"], "max rel grad diff",
                out["err"] <= 1e-3, backend=backend, world=world, params=out["params"],
                batch=f"{world} x 2 vs 1 x {2 * world}")


# -- 4. host syncs ------------------------------------------------------------------------------
def sync_check(device: torch.device, small: bool, size: tuple[int, int],
               limit: int = 8) -> dict:
    """Host syncs of one training step (forward with targets + backward, 2 images x 20
    boxes): :func:`o2f.profiling.count_host_syncs` (when present) and, on CUDA, the
    warnings of ``torch.cuda.set_sync_debug_mode('warn')``."""
    torch.manual_seed(0)
    model = build_detector(_config(small), NUM_CLASSES).to(device).train()
    images, targets = _batch(device, 2, *size)
    sum(model(images, targets).values()).backward()  # warm-up (lazy initialisation)
    model.zero_grad(set_to_none=True)
    counted, kinds = None, None
    try:
        from o2f.profiling import count_host_syncs
    except ImportError:  # the counter is not in this tree yet
        count_host_syncs = None
    if count_host_syncs is not None:
        with count_host_syncs() as syncs:
            sum(model(images, targets).values()).backward()
        counted, kinds = syncs.total, dict(syncs)
        model.zero_grad(set_to_none=True)
    cuda_warnings = None
    if device.type == "cuda":
        _sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sum(model(images, targets).values()).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cuda_warnings = sum("synchroniz" in str(w.message) for w in caught)
    value = counted if counted is not None else cuda_warnings
    ok = None if value is None else value <= limit
    return _row("host_syncs_per_step", device.type, value, "syncs", ok, limit=limit,
                kinds=kinds, cuda_sync_debug_warnings=cuda_warnings)


# -- the table ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def table(rows: list[dict], header_note: str) -> str:
    lines = [header_note, "", "| check | device | value | unit | ok | details |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        details = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()
                            if k not in ("name", "device", "value", "unit", "ok")
                            and v is not None and not isinstance(v, dict))
        ok = {True: "yes", False: "**NO**", None: "-"}[r["ok"]]
        lines.append(f"| {r['name']} | {r['device']} | {_fmt(r['value'])} | {r['unit']} | "
                     f"{ok} | {details} |")
    return "\n".join(lines)


def run(cpu: bool = False, iters: int | None = None, only: list[str] | None = None) -> list[dict]:
    """Run the checks (all, or those whose name starts with one of ``only``); returns the
    rows and prints JSON lines and the table."""
    problem = None if cpu else cuda_problem(0)
    on_cuda = not cpu and problem is None
    device = torch.device("cuda", 0) if on_cuda else torch.device("cpu")
    if on_cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        note = (f"CUDA: {len(names)} x {names[0]} (capability "
                f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}); {cuda_build()}")
    else:
        why = "--cpu" if cpu else problem
        note = (f"**CPU-only run: no CUDA check ran** ({why}). The CPU mode runs the same "
                "checks on the small demo model at 128x128.")
    print(note, flush=True)
    small = not on_cuda
    size = (128, 128) if small else (800, 1333)
    precisions = ["fp32", "bf16", "fp16"] if on_cuda else ["fp32", "bf16"]
    iters = iters or (50 if on_cuda else 2)
    wanted = (lambda name: any(name.startswith(o) for o in only)) if only else (lambda _: True)
    rows: list[dict] = []

    def attempt(name: str, fn, *args) -> None:
        if not wanted(name):
            return
        try:
            rows.append(fn(*args))
        except Exception as err:  # noqa: BLE001 - a failing check is a row, not the end
            traceback.print_exc()
            rows.append(_row(name, device.type, None, "-", False,
                             error=f"{type(err).__name__}: {err}"))

    for p in precisions:
        attempt(f"frozen_bn_grad_{p}", frozen_bn_check, device, p)
    for p in precisions:
        attempt(f"train_{'small' if small else 'r50'}_{p}", train_check, device, p, small,
                iters, 1 if small else 5, *size)
    world = torch.cuda.device_count() if on_cuda else 2
    if world >= 2:
        attempt("ddp_first_step", ddp_check, device, small, world, size)
    elif wanted("ddp_first_step"):
        rows.append(_row("ddp_first_step", device.type, None, "-", None,
                         note="needs 2+ GPUs: skipped"))
    attempt("host_syncs_per_step", sync_check, device, small, size)
    print()
    print(table(rows, note))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU mode even with CUDA")
    parser.add_argument("--iters", type=int, help="timed training steps (default 50; CPU 3)")
    parser.add_argument("--only", nargs="*", help="checks whose name starts with these")
    args = parser.parse_args(argv)
    if args.cpu:
        os.environ["O2F_CHECK_CPU"] = "1"  # the DDP workers too
    rows = run(args.cpu, args.iters, args.only)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

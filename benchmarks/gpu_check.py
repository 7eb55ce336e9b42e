#!/usr/bin/env python3
"""One-command GPU check of the KD loss and training step (issue 12); prints one table.

    bash benchmarks/gpu_check.sh [--json OUT.json]

On a CUDA machine, in under 8 minutes:
  1. the loss against a float64 reference on CUDA, for float32, bfloat16 and float16 inputs,
     unfused (logits) and fused (features + projections): loss and gradient errors, the share
     of gradient entries flushed to 0 under an fp16 loss scale (against "scale, then round" of
     the float64 gradient), no host synchronisation in backward, time per forward + backward;
  2. the base-size training step benchmark (bench_train_step.py --preset base) with --fp16
     and with --bf16: CE, tie_kd N=1/N=3 unfused, N=3 fused, N=3 fused + checkpointed passes;
  3. 30 updates of a small tie_kd training (--kd-iters 3, fused, --kd-checkpoint-passes)
     with --fp16 through fairseq's default --ddp-backend pytorch_ddp: two ranks sharing the
     one GPU (gloo), since with a single rank fairseq does not wrap the model at all; every
     logged loss must be finite.
Without CUDA the same runs at toy sizes on CPU (fp32; the training with one rank), which is
what the test suite smoke-tests (--smoke).

fairseq: if it does not import, it is installed offline from the wheelhouse that
scripts/build_wheelhouse.sh builds (default REPO/wheelhouse, or --wheelhouse) into a virtual
environment that sees the machine's own torch (--system-site-packages; from within a venv,
into a directory on PYTHONPATH). fairseq imports scikit-learn and scipy at start-up only for
a task and a criterion this check does not use; where they are missing, stand-ins whose
functions raise are put on the path (the two would not fit in the 64 MiB the GPU machine
can be sent).
"""
import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# fairseq imports at start-up, for its audio-classification task and sentence-prediction
# criterion only: `from sklearn import metrics`, `from sklearn.metrics import f1_score, ...`,
# `from scipy.stats import pearsonr, spearmanr`. Where they are missing, these stand in.
STAND_INS = {"sklearn": "metrics", "scipy": "stats"}
STAND_IN_MODULE = '''"""Stand-in (benchmarks/gpu_check.py): fairseq imports this at start-up for tasks and
criteria that the check does not use; calling anything from it raises."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise ImportError(f"{__name__}.{name}: not installed (stand-in of benchmarks/gpu_check.py)")

    return unavailable
'''


# -- environment -------------------------------------------------------------------------

PROBE = """
import importlib.util, json, sys
info = {name: importlib.util.find_spec(name) is not None for name in ("sklearn", "scipy")}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    import fairseq, tiekd_fairseq.criterion
    info["fairseq"] = fairseq.__version__
except Exception as err:
    info["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(info))
"""


def probe(python, env):
    out = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-2000:]}


def prepare_python(wheelhouse, workdir, log):
    """A Python and environment in which torch, fairseq and the plugin import; what it has."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    python = sys.executable
    info = probe(python, env)
    missing = [name for name in STAND_INS if not info.get(name)]
    if missing:
        root = os.path.join(workdir, "stand_ins")
        for name in missing:
            os.makedirs(os.path.join(root, name), exist_ok=True)
            for module, text in (("__init__", '"""Stand-in (benchmarks/gpu_check.py)."""\n'),
                                 (STAND_INS[name], STAND_IN_MODULE)):
                with open(os.path.join(root, name, module + ".py"), "w") as f:
                    f.write(text)
        env["PYTHONPATH"] += os.pathsep + root
        log.append(f"stand-ins: {', '.join(missing)}")
        info = probe(python, env)
    if "fairseq" in info:
        return python, env, info
    if "torch" not in info:
        sys.exit(f"torch does not import: {info.get('error')}")
    if not os.path.isdir(wheelhouse):
        sys.exit(f"fairseq does not import ({info.get('error')}) and there is no wheelhouse at {wheelhouse}: "
                 "run scripts/build_wheelhouse.sh where there is network, and carry it along")
    t0 = time.time()
    venv = os.path.join(workdir, "venv")
    # a venv that sees the machine's torch; not from within a venv (it would not see that
    # venv's packages), nor where the Python has no ensurepip: a directory on PYTHONPATH then
    made = sys.prefix == sys.base_prefix and subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", venv], capture_output=True).returncode == 0
    if made:
        python, target = os.path.join(venv, "bin", "python"), []
    else:
        python, target = sys.executable, ["--target", os.path.join(workdir, "site")]
        env["PYTHONPATH"] = os.pathsep.join([target[1], env["PYTHONPATH"]])
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, *target]
    pip_env = {**env, "PIP_CONFIG_FILE": os.devnull}
    subprocess.run(pip + ["--no-deps", "ve-fairseq"], check=True, env=pip_env)
    subprocess.run(pip + ["-r", os.path.join(HERE, "gpu_requirements.txt")], check=True, env=pip_env)
    info = probe(python, env)
    if "fairseq" not in info:
        sys.exit(f"fairseq installed from {wheelhouse} but does not import: {info.get('error')}")
    log.append(f"fairseq {info['fairseq']}: installed from {wheelhouse} in {time.time() - t0:.0f} s")
    return python, env, info


# -- 1. the loss against float64 -------------------------------------------------------------

def peaked(shape, vocab_dim, generator, top):
    """Logits (or projection rows) shaped like a trained model's: one token well above the rest."""
    import torch

    x = torch.randn(*shape, vocab_dim, generator=generator) * 3
    x[..., 0] += top
    return x


def flushed_share(grad, reference):
    tail = reference != 0
    return ((grad == 0) & tail).sum().item() / max(1, tail.sum().item())


def timed(fn, reps):
    import torch

    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loss_checks(smoke):
    """Rows of (setting, ok, figures) for the unfused and fused loss, each input dtype."""
    import torch
    from tiekd_fairseq.fused_output import fused_tie_kd_loss
    from tiekd_fairseq.losses import tie_kd_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, vocab, dim = (64, 1000, 32) if smoke else (4096, 32000, 512)
    g = torch.Generator().manual_seed(0)
    zs, zt = peaked((rows,), vocab, g, 15), peaked((rows,), vocab, g, 18)
    h_s, h_t = torch.randn(rows, dim, generator=g), torch.randn(rows, 2 * dim, generator=g)
    w_s = torch.randn(vocab, dim, generator=g) * dim**-0.5
    w_t = torch.randn(vocab, 2 * dim, generator=g) * (2 * dim)**-0.5
    w_s[0] += h_s.mean(0) * 0.5  # a peaked student and teacher
    w_t[0] += h_t.mean(0) * 0.5
    gold = torch.randint(4, vocab, (rows,), generator=g)
    mask = torch.ones(rows, dtype=torch.bool)
    mask[-rows // 10:] = False  # padding
    mask, gold = mask.to(device), gold.to(device)
    weight = 0.5 / 3
    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        scale = 2.0**15 if dtype == torch.float16 else 1.0  # as fairseq's fp16 scaler would
        cases = {
            "unfused": (lambda a, b: tie_kd_loss(a[0], b[0], mask, 5, weight=weight).loss,
                        [zs], [zt]),
            "fused": (lambda a, b: fused_tie_kd_loss(a[0], a[1], [b[0]], [b[1]], mask, 5, weight=weight,
                                                     ce_target=gold, label_smoothing=0.1, ce_weight=0.5).loss,
                      [h_s, w_s], [h_t, w_t]),
        }
        for kind, (fn, student, teacher) in cases.items():
            inputs = [x.to(device, dtype) for x in student]
            fixed = [x.to(device, dtype) for x in teacher]
            ref_in = [x.double().requires_grad_() for x in inputs]
            ref_loss = fn(ref_in, [x.double() for x in fixed])
            ref_grads = torch.autograd.grad(ref_loss * scale, ref_in)
            got_in = [x.clone().requires_grad_() for x in inputs]
            loss = fn(got_in, fixed)
            if device == "cuda":  # backward must not wait for the GPU (no host read)
                torch.cuda.set_sync_debug_mode("error")
            try:
                (loss * scale).backward()
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
            loss_err = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
            grad_err = max(((x.grad.double() - r).norm() / r.norm()).item() for x, r in zip(got_in, ref_grads))
            flushed = max(flushed_share(x.grad, r) - flushed_share(r.to(dtype), r) for x, r in zip(got_in, ref_grads))

            def step():
                for x in got_in:
                    x.grad = None
                (fn(got_in, fixed) * scale).backward()

            ms = 1e3 * timed(step, 3 if smoke else 5)
            grad_tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
            ok = (math.isfinite(loss.item()) and loss_err < 1e-4 and grad_err < grad_tol and flushed < 1e-3
                  and all(x.grad.dtype == dtype for x in got_in))
            size = f"{rows}x{vocab}" + ("" if kind == "unfused" else f", C={dim}")
            out.append((f"loss {kind} {str(dtype)[6:]}", ok,
                        f"loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}, flushed vs scale-then-round "
                        f"{flushed:+.1e}, {ms:.1f} ms fwd+bwd ({size})"))
    return out


# -- 2. the step benchmark -----------------------------------------------------------------

def step_benchmark(python, env, workdir, precision, smoke, timeout):
    variants = "ce,tie_kd_N1,tie_kd_N3,tie_kd_N3_fused,tie_kd_N3_fused_ckpt,tie_kd_N3_fused_chunk128"
    args = ["--preset", "tiny", "--variants", "ce,tie_kd_N3_fused"] if smoke else \
        ["--preset", "base", "--steps", "5", "--warmup", "2", "--variants", variants]
    if precision != "fp32":
        args.append(f"--{precision}")
    out = os.path.join(workdir, f"step-{precision}.json")
    proc = subprocess.run([python, os.path.join(HERE, "bench_train_step.py"), *args, "--workdir",
                           os.path.join(workdir, "bench"), "--json", out],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        return [(f"step {args[1]} {precision}", False, proc.stdout[-500:] + proc.stderr[-1500:])], {}
    res = json.load(open(out))
    ce = res["ce"]
    rows = []
    for name, r in res.items():
        finite = all(math.isfinite(x) for x in r["losses"])
        rows.append((f"step {args[1]} {precision} {name}", finite,
                     f"{1e3 * r['median_s']:.1f} ms x{r['median_s'] / ce['median_s']:.2f}, peak extra "
                     f"{r['peak_extra_bytes'] / 2**20:.0f} MiB "
                     f"x{r['peak_extra_bytes'] / max(1, ce['peak_extra_bytes']):.2f}"
                     f" ({r['memory']}, {r['device']})"))
    return rows, res


# -- 3. a short training through fairseq-train ---------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_training(python, env, workdir, cuda, timeout):
    sys.path.insert(0, HERE)
    import bench_train_step as bench

    tiny = bench.PRESETS["tiny"]
    data = bench.synthetic_data(os.path.join(workdir, "bench"), tiny["vocab"], tiny["words"])
    teacher = os.path.join(workdir, "bench", "teacher-tiny.pt")  # the smoke step benchmark's, if it ran
    device = [] if cuda else ["--cpu"]
    if not os.path.exists(teacher):
        subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import bench_train_step as b; "
                        f"b.make_teacher({data!r}, b.PRESETS['tiny']['teacher'], {teacher!r}, {device!r})"],
                       env=env, check=True, capture_output=True, timeout=timeout)
    updates = 30 if cuda else 3
    cmd = [python, "-m", "fairseq_cli.train", data, "--user-dir", os.path.join(REPO, "tiekd_fairseq"),
           "--task", "translation_tie_kd", "--teacher-path", teacher, "--criterion", "tie_kd", "--kd-iters", "3",
           "--kd-checkpoint-passes", *bench.PRESETS["tiny"]["student"], "--optimizer", "adam", "--lr", "5e-4",
           "--max-tokens", "1024", "--max-update", str(updates), "--log-interval", "1", "--log-format", "simple",
           "--no-progress-bar", "--no-save", "--disable-validation", "--num-workers", "0", "--seed", "1", *device]
    if cuda:  # two ranks on the one GPU, so that fairseq wraps the model in torch's DDP
        port, world = free_port(), 2
        cmd += ["--fp16", "--ddp-backend", "pytorch_ddp", "--distributed-world-size", str(world),
                "--distributed-backend", "gloo", "--distributed-no-spawn", "--device-id", "0",
                "--distributed-init-method", f"tcp://127.0.0.1:{port}"]
        procs = [subprocess.Popen(cmd + ["--distributed-rank", str(r)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(world)]
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
        codes = [p.returncode for p in procs]
        setting = "--fp16, pytorch_ddp, 2 ranks on 1 GPU"
    else:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        logs, codes, setting = [proc.stdout + proc.stderr], [proc.returncode], "fp32, 1 rank (CPU)"
    losses = [float(m) for m in re.findall(r"\btrain_inner\b.*?\bloss=([-+0-9.naifNI]+)", logs[0])]
    # (an fp16 step skipped for overflow is logged without being an update: >=)
    ok = codes == [0] * len(codes) and len(losses) >= updates and all(math.isfinite(x) for x in losses)
    figures = (f"{len(losses)} updates, loss {losses[0]:.2f} -> {losses[-1]:.2f}, all finite" if losses and ok else
               f"exit {codes}, {len(losses)} losses {losses[:5]}: " + logs[0][-1500:])
    return [(f"train {updates} updates tie_kd N=3 fused+ckpt", ok, f"{setting}: {figures}")], losses


# -- main --------------------------------------------------------------------------------

def child_loss(args):
    rows = loss_checks(args.smoke)
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheelhouse", default=os.path.join(REPO, "wheelhouse"))
    ap.add_argument("--workdir", help="scratch space (default: a temporary directory)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (what CPU-only machines run anyway)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part == "loss":
        return child_loss(args)
    t_start = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tiekd-gpu-check-")
    os.makedirs(workdir, exist_ok=True)
    notes = []
    python, env, info = prepare_python(args.wheelhouse, workdir, notes)
    cuda = info["cuda"]
    smoke = args.smoke or not cuda
    notes.insert(0, f"torch {info['torch']}, {info['device']}, python {sys.version.split()[0]}")
    rows, figures = [], {}
    proc = subprocess.run([python, __file__, "--part", "loss"] + ["--smoke"] * smoke, env=env,
                          capture_output=True, text=True, timeout=240)
    if proc.returncode:
        rows.append(("loss checks", False, proc.stderr[-1500:]))
    else:
        rows += [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
    for precision in (["fp32"] if smoke else ["fp16", "bf16"]):
        r, res = step_benchmark(python, env, workdir, precision, smoke, timeout=200)
        rows += r
        figures[f"step_{precision}"] = res
    r, losses = short_training(python, env, workdir, cuda and not smoke, timeout=180)
    rows += r
    figures["train_losses"] = losses
    width = max(len(r[0]) for r in rows)
    print(f"tiekd GPU check ({'smoke, ' if smoke else ''}{'; '.join(notes)}; {time.time() - t_start:.0f} s)")
    print(f"{'check':{width}s}  ok    figures")
    for name, ok, text in rows:
        print(f"{name:{width}s}  {'yes' if ok else 'NO ':3s}   {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "notes": notes, "figures": figures, "seconds": time.time() - t_start}, f, indent=1)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if not all(ok for _, ok, _ in rows):
        sys.exit("some checks failed")


if __name__ == "__main__":
    main()

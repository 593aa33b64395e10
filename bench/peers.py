"""How fast is one CPU training step of xpnn next to its peers, PyTorch and Chainer?

    python bench/peers.py                                   # all: ~half an hour on 2 cores
    python bench/peers.py --nets mnist --rounds 3 --steps 5 # a quick look
    python bench/peers.py --json peers.json --python-chainer /path/to/venv/bin/python
    python bench/peers.py --frameworks xpnn torch --xpnn-before /tmp/xpnn-old   # xpnn against
                                            # another checkout of itself (git worktree), too

What it times: one training step (forward, backward, SGD update with learning rate 1e-3,
float32, random inputs with a fixed seed) of the same nets in each framework:

    mnist     MNIST CNN, N=100: conv3x3 1->8 pad 1 - relu - pool2 - conv3x3 8->8 pad 1 - relu -
              pool2 - affine 392->32 - relu - affine 32->10 - softmax loss
    cifar50   CIFAR 3-layer CNN, N=50: conv7x7 3->32 pad 3 - relu - pool2 - affine 8192->100 -
              relu - affine 100->10 - softmax loss
    cifar128  the same with N=128

(xpnn's models pool before their ReLU: the same function, see xpnn/models.py)

under each condition: 1 or 2 BLAS/OpenMP threads, on an idle machine or with one core kept busy
by another program (`python -c "while True: pass"`, which this script starts and stops).

How: every framework x net x thread count runs in its own long-lived worker process (this
script with --worker), which builds the net once and warms it up. Each round, the driver asks
every framework's worker in turn, in a freshly shuffled order, to time --steps steps and report
their median; only one worker works at a time, after a pause that lets the previous worker's
spinning BLAS/OpenMP threads go to sleep. Slow drifts of the machine (clock, other load)
then hit all frameworks alike, and the per-round ratio to PyTorch cancels them: the table gives
each framework's median step time and the median, range and interquartile range over rounds of
that ratio. The frameworks may live in different interpreters (Chainer 7 needs NumPy < 2):
--python runs xpnn and PyTorch, --python-chainer runs Chainer. A framework that cannot be
imported is reported and left out. The driver itself needs only the standard library.

Each worker gets its thread count as a user sets it, in OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS / MKL_NUM_THREADS (and torch.set_num_threads): xpnn runs that many batch
shards at once (see xpnn.parallel), PyTorch and Chainer as their BLAS/OpenMP threads.

Setting up the peers (PyTorch from this machine's local CPU build; Chainer in a venv of its own):
    pip install torch==2.13.0
    python3 -m venv /work/chainer-venv && /work/chainer-venv/bin/pip install "setuptools<70" wheel
    /work/chainer-venv/bin/pip install --no-build-isolation chainer==7.8.1 "numpy<2" threadpoolctl
"""
import argparse
import contextlib
import ctypes
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time

NETS = {"mnist": ("MNIST CNN, N=100", 100, (1, 28, 28)),
        "cifar50": ("CIFAR 3-layer CNN, N=50", 50, (3, 32, 32)),
        "cifar128": ("CIFAR 3-layer CNN, N=128", 128, (3, 32, 32))}
FRAMEWORKS = ["xpnn", "xpnn-before", "torch", "chainer"]
LOADS = {"idle": "idle", "busy": "1 core busy"}
THREAD_VARIABLES = ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
LEARNING_RATE = 1e-3
WARMUP_STEPS = 5
PAUSE_SECONDS = 0.5      # between two workers' rounds: see measure()
CHAINER_VENV_PYTHON = "/work/chainer-venv/bin/python"


# ---------------------------------------------------------------------------- worker side

def build_step(framework, net, threads):
    """Build `net` in `framework`; return (a function doing one training step, its version)."""
    import numpy as np
    _, N, shape = NETS[net]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, *shape), dtype=np.float32)
    y = rng.integers(0, 10, N)
    if framework in ("xpnn", "xpnn-before"):     # xpnn-before: another checkout, on PYTHONPATH
        import xpnn
        from xpnn import optim
        from xpnn.models import ThreeLayerConvNet, mnist_cnn
        try:
            from xpnn.parallel import sharded
        except ImportError:           # an xpnn from before xpnn.parallel: its models cut
            def sharded(model, threads):       # their batches into shards themselves
                return model
        try:                  # as the `xpnn` command does; an older xpnn did it by itself
            from xpnn.backends.numpy import keep_freed_memory_for_reuse
            keep_freed_memory_for_reuse()
        except ImportError:
            pass
        # Built directly, without a Solver (whose thread policy would pick its own count):
        # each batch runs as shards on `threads` runners, as the Solver's with --threads.
        model = mnist_cnn(seed=0) if net == "mnist" else ThreeLayerConvNet(seed=0)
        sharded_model = sharded(model, threads)
        configs = {name: {"learning_rate": LEARNING_RATE} for name in model.params}

        def step():
            _, grads = sharded_model.loss(X, y)
            for name, w in model.params.items():
                model.params[name], configs[name] = optim.sgd(w, grads[name], configs[name])
        return step, xpnn.__version__
    if framework == "torch":
        import torch
        from torch import nn
        torch.set_num_threads(threads)
        if net == "mnist":
            model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(392, 32), nn.ReLU(), nn.Linear(32, 10))
        else:
            model = nn.Sequential(nn.Conv2d(3, 32, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(32 * 16 * 16, 100), nn.ReLU(),
                                  nn.Linear(100, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            optimizer.zero_grad()
            loss_fn(model(Xt), yt).backward()
            optimizer.step()
        return step, torch.__version__
    import chainer
    import chainer.functions as F
    import chainer.links as L

    def pool(x):       # cover_all=False: plain 2x2 windows, as in the other frameworks
        return F.max_pooling_2d(x, 2, cover_all=False)
    if net == "mnist":
        model = chainer.Sequential(L.Convolution2D(1, 8, 3, pad=1), F.relu, pool,
                                   L.Convolution2D(8, 8, 3, pad=1), F.relu, pool,
                                   L.Linear(392, 32), F.relu, L.Linear(32, 10))
    else:
        model = chainer.Sequential(L.Convolution2D(3, 32, 7, pad=3), F.relu, pool,
                                   L.Linear(32 * 16 * 16, 100), F.relu, L.Linear(100, 10))
    optimizer = chainer.optimizers.SGD(lr=LEARNING_RATE)
    optimizer.setup(model)
    labels = y.astype(np.int32)        # Chainer's softmax_cross_entropy wants int32 labels

    def step():
        model.cleargrads()
        F.softmax_cross_entropy(model(X), labels).backward()
        optimizer.update()
    return step, chainer.__version__


def run_worker(framework, net, threads, steps):
    """Answer the driver over stdin/stdout, one JSON line per request: first a hello (versions,
    or why the framework cannot run), then one median step time for each "round" line."""
    # Keep the real stdout for replies only: whatever a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message):
        replies.write(json.dumps(message) + "\n")
        replies.flush()
    try:
        import numpy as np
        import threadpoolctl
        step, version = build_step(framework, net, threads)
        # The environment asked for `threads` already; this makes sure, and checks it.
        threadpoolctl.threadpool_limits(threads)
        blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        if any(pool["num_threads"] != threads for pool in blas):
            raise RuntimeError(f"BLAS runs {[p['num_threads'] for p in blas]} threads, not {threads}")
        for _ in range(WARMUP_STEPS):
            step()
    except Exception as error:           # not installed, or too old or new for this NumPy
        reply({"error": f"{type(error).__name__}: {error}"})
        return
    reply({"version": version, "python": platform.python_version(), "numpy": np.__version__,
           "blas": ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')})"
                             for p in blas) or "none found"})
    for request in sys.stdin:            # ends when the driver closes the pipe, or dies
        if request.strip() != "round":
            break
        step()       # untimed: the other workers just ran, and a training loop's caches are warm
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        reply({"median_s": statistics.median(times)})


# ---------------------------------------------------------------------------- driver side

def die_with_parent():
    """Runs in each child before it starts: Linux kills the child when the driver dies,
    even by SIGKILL, so no worker or busy loop outlives it."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):      # not Linux: rely on the finally blocks
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Worker:
    def __init__(self, python, framework, net, threads, steps, before=None):
        env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
        if framework == "xpnn-before":
            env["PYTHONPATH"] = before
        command = [python, os.path.abspath(__file__), "--worker", framework, net, str(threads),
                   "--steps", str(steps)]
        # A session of its own: Ctrl-C reaches only the driver, which then closes the workers.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, start_new_session=True,
                                        preexec_fn=die_with_parent)
        self.hello = self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[3:6]} exited (see its error above)")
        return json.loads(line)

    def time_round(self):
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self.read()["median_s"]

    def close(self):
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_worker(python, framework, net, threads, args):
    """(the worker, its hello), or (None, {"error": why}) when the framework cannot run."""
    try:
        worker = Worker(python, framework, net, threads, args.steps, args.xpnn_before)
    except (OSError, RuntimeError) as error:       # no such interpreter, or it crashed
        return None, {"error": str(error)}
    if "error" in worker.hello:
        worker.close()
        return None, worker.hello
    return worker, worker.hello


@contextlib.contextmanager
def machine_load(load):
    if load == "idle":
        yield
        return
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent)
    try:
        time.sleep(1.0)        # let it get going, and the scheduler settle, before timing
        yield
    finally:
        busy.kill()
        busy.wait()


def spread(values):
    q1, _, q3 = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
                 else values * 3)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3}


def measure(workers, rounds, rng, label):
    """{framework: [median step seconds of each round]}, the workers asked in shuffled order."""
    times = {framework: [] for framework in workers}
    for r in range(rounds):
        order = list(workers)
        rng.shuffle(order)
        for framework in order:
            # The previous worker's BLAS / OpenMP threads spin for a while after its last step
            # (OpenBLAS up to ~0.1 s) before they sleep: let them, or they take cores from this one.
            time.sleep(PAUSE_SECONDS)
            times[framework].append(workers[framework].time_round())
        print(f"  {label}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def summarize(net, threads, load, times):
    row = {"net": net, "threads": threads, "load": load,
           "median_ms": {fw: statistics.median(t) * 1e3 for fw, t in times.items()},
           "round_ms": {fw: [s * 1e3 for s in t] for fw, t in times.items()}, "ratio_to_torch": {}}
    if "torch" in times:
        for framework in times.keys() - {"torch"}:
            ratios = [a / b for a, b in zip(times[framework], times["torch"])]
            row["ratio_to_torch"][framework] = {**spread(ratios), "per_round": ratios}
    if "xpnn-before" in times and "xpnn" in times:
        ratios = [a / b for a, b in zip(times["xpnn"], times["xpnn-before"])]
        row["xpnn_to_before"] = {**spread(ratios), "per_round": ratios}
    return row


def condition_name(threads, load):
    return f"{threads} thread{'s' * (threads > 1)}, {LOADS[load]}"


def report(header, rows):
    shown = [fw for fw in FRAMEWORKS if any(fw in r["median_ms"] for r in rows)]
    compared = [fw for fw in shown if fw != "torch" and any(fw in r["ratio_to_torch"] for r in rows)]
    before = any("xpnn_to_before" in r for r in rows)
    lines = [*header, "",
             "| net | condition | " + " | ".join(f"{fw} ms" for fw in shown)
             + "".join(f" | {fw}/torch median [min–max] (IQR)" for fw in compared)
             + (" | xpnn/xpnn-before median [min–max] (IQR)" if before else "") + " |",
             "|---|---|" + "---:|" * (len(shown) + len(compared) + before)]
    for r in rows:
        cells = [NETS[r["net"]][0], condition_name(r["threads"], r["load"])]
        cells += [f"{r['median_ms'][fw]:.2f}" if fw in r["median_ms"] else "–" for fw in shown]
        for fw in compared:
            s = r["ratio_to_torch"].get(fw)
            cells.append(f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}] "
                         f"({s['q1']:.2f}–{s['q3']:.2f})" if s else "–")
        if before:
            s = r.get("xpnn_to_before")
            cells.append(f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}] "
                         f"({s['q1']:.2f}–{s['q3']:.2f})" if s else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_header(args):
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            models = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            cpu = next(models, cpu)
    return [f"Machine: {cpu}, {os.cpu_count()} cores; driver Python {platform.python_version()}",
            f"Method: {args.rounds} rounds x {args.steps} timed steps (median) per framework, "
            f"order shuffled per round (seed {args.seed}); {WARMUP_STEPS} warm-up steps; "
            f"SGD lr {LEARNING_RATE}, float32"]


def drive(args):
    pythons = {"xpnn": args.python, "xpnn-before": args.python, "torch": args.python,
               "chainer": args.python_chainer}
    frameworks, hellos, rows, rng = list(args.frameworks), {}, [], random.Random(args.seed)
    for net in args.nets:
        for threads in args.threads:
            workers = {}
            try:
                for framework in list(frameworks):    # started one at a time: warm-ups don't overlap
                    worker, hello = start_worker(pythons[framework], framework, net, threads, args)
                    hellos.setdefault(framework, {**hello, "interpreter": pythons[framework]})
                    if worker is None:
                        print(f"{framework} cannot run with {pythons[framework]}, left out: "
                              f"{hello['error']}", file=sys.stderr)
                        frameworks.remove(framework)
                    else:
                        workers[framework] = worker
                for load in args.loads:
                    with machine_load(load):
                        label = f"{net}, {condition_name(threads, load)}"
                        times = measure(workers, args.rounds, rng, label)
                    rows.append(summarize(net, threads, load, times))
            finally:
                for worker in workers.values():
                    worker.close()
    header = machine_header(args)
    for framework, hello in hellos.items():
        header.append(f"{framework}: not run ({hello['error']})" if "error" in hello else
                      f"{framework} {hello['version']}: Python {hello['python']}, NumPy "
                      f"{hello['numpy']} on {hello['blas']}; {hello['interpreter']}")
    print(report(header, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "settings": vars(args), "results": rows}, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--loads", nargs="+", choices=list(LOADS), default=list(LOADS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS,
                        default=[fw for fw in FRAMEWORKS if fw != "xpnn-before"])
    parser.add_argument("--xpnn-before", metavar="PATH", help="also time the xpnn of another "
                        "checkout (e.g. `git worktree add /tmp/xpnn-old HEAD~3`), as xpnn-before")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (K)")
    parser.add_argument("--seed", type=int, default=0, help="for the order of each round")
    parser.add_argument("--json", help="also write the results, every round included, here")
    parser.add_argument("--python", default=sys.executable, help="interpreter for xpnn and torch")
    parser.add_argument("--python-chainer", help="interpreter for chainer (default: "
                        f"{CHAINER_VENV_PYTHON} if it exists, else --python)")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "NET", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.xpnn_before and "xpnn-before" not in args.frameworks:
        args.frameworks.append("xpnn-before")
    if args.worker:
        framework, net, threads = args.worker
        run_worker(framework, net, int(threads), args.steps)
        return
    if args.python_chainer is None:
        have_venv = os.path.exists(CHAINER_VENV_PYTHON)
        args.python_chainer = CHAINER_VENV_PYTHON if have_venv else args.python
    # SIGTERM runs the finally blocks too, so the busy loop and the workers are always stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    drive(args)


if __name__ == "__main__":
    main()

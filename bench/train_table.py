"""The README's `xpnn train` tables, measured again: each command in a fresh process, idle and
with another program keeping one core busy, and whether every run of a model saved the same
weights (they must: the thread count changes only the speed).

    python bench/train_table.py                 # the README's tables (~5 minutes on 2 cores)
    python bench/train_table.py --quick         # one command, one run each: a look

It prints markdown tables with the date, the machine and the library versions above them.
"""
import argparse
import contextlib
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np
import threadpoolctl

COMMANDS = [   # (what the README shows, the arguments, thread settings to compare)
    ("xpnn train", [], [None, 1, 2]),
    ("xpnn train --seed 1", ["--seed", "1"], [None]),
    ("xpnn train --seed 2", ["--seed", "2"], [None]),
    ("xpnn train --model fc --hidden 200", ["--model", "fc", "--hidden", "200"], [None]),
    ("xpnn train --model fc --hidden 200 --epochs 5", ["--model", "fc", "--hidden", "200", "--epochs", "5"], [None]),
    ("xpnn train --model fc --hidden 256,128 --normalization batchnorm --dropout 0.8",
     ["--model", "fc", "--hidden", "256,128", "--normalization", "batchnorm", "--dropout", "0.8"], [None]),
    ("xpnn train --model softmax", ["--model", "softmax"], [None]),
]
LINE = re.compile(r"test accuracy: ([\d.]+).*training time: ([\d.]+) s")


@contextlib.contextmanager
def one_core_busy(busy):
    if not busy:
        yield
        return
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        loop.kill()
        loop.wait()


def train(args, threads, busy, out):
    command = [sys.executable, "-m", "xpnn.cli", "train", *args, "--out", out]
    if threads:
        command += ["--threads", str(threads)]
    with one_core_busy(busy):
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    accuracy, seconds = LINE.search(done.stdout).groups()
    epochs = [float(s) for s in re.findall(r"^\(Epoch \d+ / \d+\).* ([\d.]+) s$", done.stdout, re.M)]
    with np.load(os.path.join(out, "model.npz")) as f:
        weights = {k: f[k] for k in f.files}
    return float(accuracy), float(seconds), epochs, weights


def header():
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    blas = ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')}, {p['num_threads']} threads)"
                     for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
    return (f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu}, "
            f"{os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, {blas}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=2, help="runs of each command and load")
    options = parser.parse_args()
    commands = COMMANDS[:1] if options.quick else COMMANDS
    runs = 1 if options.quick else options.runs
    print(header(), "\n")
    print("| command | threads | test accuracy | training time, idle | one core busy | slowest epoch / first, busy | same weights |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for shown, args, settings in commands:
            reference = None
            for threads in settings:
                times, slowest, accuracies, same = {False: [], True: []}, [], set(), True
                for busy in (False, True):
                    for run in range(runs):
                        out = os.path.join(scratch, f"{len(os.listdir(scratch))}")
                        accuracy, seconds, epochs, weights = train(args, threads, busy, out)
                        times[busy].append(seconds)
                        accuracies.add(accuracy)
                        if busy and len(epochs) > 1:
                            slowest.append(max(epochs) / epochs[0])
                        if reference is None:
                            reference = weights
                        same &= all(np.array_equal(reference[k], weights[k]) for k in reference)
                span = {b: (f"{min(t):.1f}-{max(t):.1f} s" if len(t) > 1 else f"{t[0]:.1f} s") for b, t in times.items()}
                print(f"| `{shown}` | {threads or 'measured'} | {', '.join(f'{a:.2%}' for a in sorted(accuracies))} "
                      f"| {span[False]} | {span[True]} | {max(slowest, default=1):.2f} | {'yes' if same else 'NO'} |",
                      flush=True)


if __name__ == "__main__":
    main()

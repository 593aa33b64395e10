"""Render a pytest-benchmark JSON file as a markdown table of medians and ratios, and a PNG chart.

    pytest bench/ --benchmark-only --benchmark-json=bench/latest.json
    python bench/report.py bench/latest.json [--out bench/RESULTS-table.md] [--png bench/results.png]

Ratios come from the same run: "xpnn / torch" is xpnn's time over PyTorch's (lower is better,
< 1 means xpnn is faster); "baseline / xpnn" is how many times faster xpnn is than the
assignment-style NumPy code.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path


def load_rows(path):
    data = json.loads(Path(path).read_text())
    rows = defaultdict(dict)        # (case, device) -> impl -> {median_ms, memory}
    for b in data["benchmarks"]:
        p = b["params"]
        memory = b.get("extra_info", {})
        rows[(p["case"], p["device"])][p["impl"]] = {
            "median_ms": b["stats"]["median"] * 1e3,
            "memory": memory.get("peak_host_MB", memory.get("peak_device_MB")),
        }
    return data.get("machine_info", {}), data.get("datetime", ""), rows


def fmt_ms(entry):
    return f"{entry['median_ms']:.3f}" if entry else "-"


def markdown(rows):
    lines = ["| case | device | xpnn ms | torch ms | baseline ms | xpnn / torch | baseline / xpnn | xpnn peak MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (case, device), impls in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        x, t, b = impls.get("xpnn"), impls.get("torch"), impls.get("baseline")
        vs_torch = f"{x['median_ms'] / t['median_ms']:.2f}" if x and t else "-"
        vs_base = f"{b['median_ms'] / x['median_ms']:.1f}x" if x and b else "-"
        mem = f"{x['memory']:.1f}" if x and x["memory"] is not None else "-"
        lines.append(f"| {case} | {device} | {fmt_ms(x)} | {fmt_ms(t)} | {fmt_ms(b)} | {vs_torch} | {vs_base} | {mem} |")
    return "\n".join(lines)


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted(k for k, v in rows.items() if "xpnn" in v and "torch" in v)
    if not keys:
        return
    labels = [f"{case} ({device})" for case, device in keys]
    ratios = [rows[k]["xpnn"]["median_ms"] / rows[k]["torch"]["median_ms"] for k in keys]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(keys) + 1.5), constrained_layout=True)
    colors = ["tab:green" if r <= 1 else "tab:orange" if r <= 2 else "tab:red" for r in ratios]
    ax.barh(range(len(keys)), ratios, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("xpnn time / PyTorch time (median, same run; < 1 is faster than PyTorch)")
    ax.set_title("xpnn vs PyTorch")
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}", va="center", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--out", help="write the markdown table here (default: print it)")
    parser.add_argument("--png", help="write a bar chart of xpnn / torch ratios here")
    args = parser.parse_args()
    machine, when, rows = load_rows(args.json)
    table = markdown(rows)
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    header = f"Run {when} on {cpu}, Python {machine.get('python_version', '?')}\n\n"
    if args.out:
        Path(args.out).write_text(header + table + "\n")
    else:
        print(header + table)
    if args.png:
        chart(rows, args.png)


if __name__ == "__main__":
    main()

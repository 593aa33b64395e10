"""A run's directory: where a new run writes (never over an earlier one), its run.json (the
run's settings, so that `--resume DIR` needs no others), resuming it, and the JSON files the
commands write and read."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from ..io import CheckpointError
from ..checkpoint import latest_checkpoint

RUN_SETTINGS = "run.json"     # a run's arguments, so that --resume needs no others

# What --resume may change: how long, where and how verbosely a run trains, and what it does
# on a NaN loss. Everything else is the run's own (run.json); changing it would be a new run.
RESUMABLE = {"resume", "epochs", "device", "on_nonfinite", "quiet", "threads", "keep_checkpoints"}


def output_dir(requested, default, marker):
    """Where a new run writes, never over an earlier one: `requested` unless it already holds
    `marker`; with no --out, the first of default, default-2, default-3, ... not yet there."""
    if requested:
        out = Path(requested)
        if (out / marker).exists():
            raise ValueError(f"{out} already holds a run ({marker}); choose another --out"
                             + (f", or continue it with --resume {out}" if marker == RUN_SETTINGS else ""))
        return out
    out, k = Path(default), 1
    while out.exists():
        k += 1
        out = Path(f"{default}-{k}")
    return out


def strict_json(value):
    """`value` as JSON text that every reader accepts: NaN and infinities (a diverged loss)
    become null, which allow_nan=False then guarantees."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), indent=2, allow_nan=False)


def read_json(path):
    """The JSON object (a dict) in path; CheckpointError naming the file when it holds none."""
    try:
        value = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: it is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is corrupt: it holds a JSON {type(value).__name__}, "
                              "not an object of settings")
    return value


def resume_command(out, epochs=None):
    return f"xpnn train --resume {shlex.quote(str(out))}" + (f" --epochs {epochs}" if epochs else "")


def epoch_of(checkpoint):
    """K of checkpoint_epoch_K.npz."""
    return int(Path(checkpoint).stem.rpartition("_")[2])


def resume_settings(args, given):
    """The run directory and latest checkpoint (None if no epoch finished) of --resume DIR;
    the run's settings replace the command line's, which may change only RESUMABLE ones."""
    out = Path(args.resume)
    if not (out / RUN_SETTINGS).is_file():
        raise CheckpointError(f"--resume {out}: not an xpnn run directory (no {RUN_SETTINGS})")
    settings = read_json(out / RUN_SETTINGS)
    changed = [f"--{name.replace('_', '-')} (the run's: {settings.get(name)}, given: {getattr(args, name)})"
               for name in sorted(given - RESUMABLE) if getattr(args, name) != settings.get(name)]
    if changed:
        raise ValueError(f"--resume {out} continues the run with its own settings ({out / RUN_SETTINGS}), "
                         f"so it cannot change {', '.join(changed)}. Only --epochs (to train longer), "
                         "--device, --on-nonfinite, --keep-checkpoints and --quiet may change; other "
                         "settings make a new run")
    for name, value in settings.items():
        if name not in given and name != "command":
            setattr(args, name, value)
    return out, latest_checkpoint(out)


def refuse_fewer_epochs(out, trained, epochs):
    if trained > epochs:
        raise ValueError(f"--epochs {epochs}: {out} has already trained {trained} epochs; to "
                         f"train it for longer: {resume_command(out, 'N')} (N > {trained})")

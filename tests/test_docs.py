"""The API reference: pdoc builds a page per public module from the docstrings, as CI does
(.ci/run writes it to build/api)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci_modules():
    """The modules .ci/run gives pdoc."""
    text = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "-m pdoc" in l)
    return re.findall(r"\bxpnn(?:\.\w+)*", line)


def test_the_api_reference_builds_a_page_per_public_module(tmp_path):
    modules = ci_modules()
    assert {"xpnn", "xpnn.layers", "xpnn.models", "xpnn.solver", "xpnn.optim",
            "xpnn.cs231n"} <= set(modules)
    done = subprocess.run([sys.executable, "-m", "pdoc", "--output-directory", str(tmp_path),
                           *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for module in modules:
        page = tmp_path / (module.replace(".", "/") + ".html")
        assert page.is_file(), module
    layers = (tmp_path / "xpnn" / "layers.html").read_text()
    assert "affine_forward" in layers and "conv_forward" in layers
    solver = (tmp_path / "xpnn" / "solver.html").read_text()
    assert "check_accuracy" in solver and "load_checkpoint" in solver
    assert "install" in (tmp_path / "xpnn" / "cs231n.html").read_text()

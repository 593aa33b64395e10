"""The CS231n drop-in: assignment cells run unchanged through `cs231n.*` (xpnn.cs231n), and
the pieces the assignments need beyond xpnn's own API: group norm, the _fast layers, the
sandwich layers, `dropout=`, the blob gradient helpers and the CIFAR-10 loader."""
import sys
import textwrap

import numpy as np
import pytest

import xpnn.cs231n
from xpnn.backend import to_numpy
from xpnn.data import DataError, write_cifar_batch
from xpnn.gradient_check import eval_numerical_gradient_array, rel_error
from xpnn.layers import (conv_relu_pool_backward, conv_relu_pool_forward,
                         spatial_groupnorm_backward, spatial_groupnorm_forward)
from xpnn.models import FullyConnectedNet as XpnnFullyConnectedNet

from .test_layers import check_layer

# The assignment notebooks' setup cell (ConvolutionalNetworks / FullyConnectedNets / Dropout).
SETUP = """
import numpy as np
from cs231n.classifiers.fc_net import *
from cs231n.classifiers.cnn import *
from cs231n.data_utils import get_CIFAR10_data
from cs231n.gradient_check import eval_numerical_gradient_array, eval_numerical_gradient
from cs231n.layers import *
from cs231n.fast_layers import *
from cs231n.solver import Solver

def rel_error(x, y):
    \"\"\" returns relative error \"\"\"
    return np.max(np.abs(x - y) / (np.maximum(1e-8, np.abs(x) + np.abs(y))))
"""


@pytest.fixture(scope="module", autouse=True)
def cs231n():
    """`import xpnn.cs231n; xpnn.cs231n.install()` for this module's tests, undone afterwards."""
    before = {k: v for k, v in sys.modules.items() if k == "cs231n" or k.startswith("cs231n.")}
    xpnn.cs231n.install()
    yield
    xpnn.cs231n.uninstall()
    sys.modules.update(before)


def run_cell(source, ns=None):
    """Execute notebook cells (the setup cell first) in one namespace; return it."""
    if ns is None:
        ns = {}
        exec(SETUP, ns)
    exec(textwrap.dedent(source), ns)
    return ns


# ---------------------------------------------------------------------------- the layout

def test_install_registers_every_module():
    import importlib

    import cs231n
    import cs231n.classifiers.fc_net
    assert cs231n is xpnn.cs231n              # no assignment folder on sys.path: xpnn's package
    for module in xpnn.cs231n.MODULES:
        assert importlib.import_module(f"cs231n.{module}") is sys.modules[f"xpnn.cs231n.{module}"]
        # one module under two names; xpnn's keeps its own spec (relative imports, reload)
        assert sys.modules[f"xpnn.cs231n.{module}"].__spec__.name == f"xpnn.cs231n.{module}"
    assert cs231n.classifiers.fc_net.FullyConnectedNet.__mro__[2] is XpnnFullyConnectedNet


# An assignment's folder as a student has it: the package, its classifiers (kNN, the linear
# classifiers importing each other as assignment 1's do), features.py, a helper of the
# student's own, and modules xpnn also provides (layers.py: xpnn's wins; fc_net.py, too).
ASSIGNMENT = {
    "cs231n/__init__.py": "",
    "cs231n/classifiers/__init__.py": """
        from cs231n.classifiers.k_nearest_neighbor import *
        from cs231n.classifiers.linear_classifier import *
    """,
    "cs231n/classifiers/k_nearest_neighbor.py": """
        from builtins import range
        from builtins import object
        import numpy as np
        class KNearestNeighbor(object):
            def train(self, X, y):
                self.X_train, self.y_train = X, y
            def predict(self, X, k=1):
                d = ((X[:, None, :] - self.X_train[None]) ** 2).sum(-1)
                return self.y_train[np.argmin(d, axis=1)]
    """,
    "cs231n/classifiers/linear_svm.py": """
        def svm_loss_naive(W, X, y, reg):
            return "student svm"
    """,
    "cs231n/classifiers/softmax.py": """
        def softmax_loss_naive(W, X, y, reg):
            return "student softmax"
    """,
    "cs231n/classifiers/linear_classifier.py": """
        from ..classifiers.linear_svm import *
        from ..classifiers.softmax import *
        class LinearClassifier(object):
            pass
        class Softmax(LinearClassifier):
            def loss(self, *args):
                return softmax_loss_naive(*args)
    """,
    "cs231n/classifiers/fc_net.py": "raise ImportError('the student fc_net was imported')\n",
    "cs231n/features.py": """
        from __future__ import print_function
        from builtins import zip
        from builtins import range
        import matplotlib
        import numpy as np
        from scipy.ndimage import uniform_filter
        from cs231n.layers import relu_forward      # a student file using a provided module
        def extract_features(imgs, feature_fns):
            return relu_forward(np.asarray(imgs, dtype=float).reshape(len(imgs), -1) - 1)[0]
    """,
    "cs231n/my_helper.py": "ANSWER = 42\n",
    "cs231n/layers.py": "raise ImportError('the student layers were imported')\n",
}


def write_assignment(folder, files=ASSIGNMENT):
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(textwrap.dedent(text))
    return folder


def run_python(source, cwd):
    """Run `source` as a notebook would, in `cwd` ('' first on sys.path); return stdout."""
    import subprocess
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_overlays_the_students_package(tmp_path):
    write_assignment(tmp_path)
    out = run_python("""
        import xpnn.cs231n; xpnn.cs231n.install()
        import sys
        import numpy as np
        import cs231n
        from cs231n.classifiers import KNearestNeighbor, LinearClassifier, Softmax
        from cs231n.classifiers.k_nearest_neighbor import KNearestNeighbor as K2
        from cs231n.classifiers.softmax import softmax_loss_naive
        from cs231n.classifiers.linear_svm import svm_loss_naive
        from cs231n.features import extract_features
        import cs231n.my_helper
        from cs231n.layers import affine_forward
        from cs231n.classifiers.fc_net import TwoLayerNet, FullyConnectedNet
        from cs231n.solver import Solver
        import cs231n.classifiers.cnn

        assert cs231n.__file__.endswith("cs231n/__init__.py") and "xpnn" not in cs231n.__file__
        assert KNearestNeighbor is K2
        knn = KNearestNeighbor(); knn.train(np.eye(3), np.arange(3))
        assert list(knn.predict(np.eye(3)[::-1])) == [2, 1, 0]
        assert softmax_loss_naive(0, 0, 0, 0) == "student softmax"
        assert svm_loss_naive(0, 0, 0, 0) == "student svm"
        assert Softmax().loss(0, 0, 0, 0) == "student softmax"
        assert cs231n.my_helper.ANSWER == 42
        assert extract_features(np.ones((2, 3)) * 3, []).tolist() == [[2.0] * 3] * 2
        assert affine_forward.__module__ == "xpnn.layers"
        assert Solver.__module__ == "xpnn.solver"
        assert TwoLayerNet.__module__ == "xpnn.cs231n.classifiers.fc_net"
        assert cs231n.classifiers.cnn is sys.modules["xpnn.cs231n.classifiers.cnn"]
        assert cs231n.layers is sys.modules["xpnn.cs231n.layers"]
        model = FullyConnectedNet([5], input_dim=4, num_classes=3, seed=0)
        assert model.loss(np.ones((2, 4))).shape == (2, 3)
        print("ok")
    """, cwd=tmp_path)
    assert out.strip() == "ok"


def test_install_after_the_students_imports_and_after_a_change_of_directory(tmp_path):
    files = dict(ASSIGNMENT, **{"cs231n/layers.py": "STUDENT = True\n"})
    write_assignment(tmp_path / "assignment1", files)
    out = run_python(f"""
        import os, sys
        import xpnn.cs231n
        # The notebook's first cells imported the student's layers; install() comes later.
        sys.path.insert(0, {str(tmp_path / "assignment1")!r})
        import cs231n.layers
        assert cs231n.layers.STUDENT
        xpnn.cs231n.install()
        import cs231n.layers
        from cs231n.layers import affine_forward
        assert cs231n.layers is sys.modules["xpnn.cs231n.layers"], cs231n.layers
        assert affine_forward.__module__ == "xpnn.layers"
        # install(own=...) keeps the student's file for a module xpnn provides
        xpnn.cs231n.install(own=("layers",))
        import cs231n.layers
        assert cs231n.layers.STUDENT
        print("ok")
    """, cwd=tmp_path)
    assert out.strip() == "ok"
    # %cd into the assignment after install(): resolved at import time.
    out = run_python(f"""
        import os
        import xpnn.cs231n; xpnn.cs231n.install()
        os.chdir({str(tmp_path / "assignment1")!r})
        from cs231n.features import extract_features
        from cs231n.classifiers import KNearestNeighbor
        from cs231n.layers import affine_forward
        assert affine_forward.__module__ == "xpnn.layers"
        print("ok")
    """, cwd=tmp_path)
    assert out.strip() == "ok"


def test_the_working_directory_is_searched_when_sys_path_lacks_it(tmp_path):
    # A script (or a kernel started elsewhere) has its own folder, not the working
    # directory, on sys.path: the student's files are still the working directory's.
    write_assignment(tmp_path / "assignment1")
    script = tmp_path / "elsewhere" / "notebook.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent("""
        import sys
        assert "" not in sys.path
        import xpnn.cs231n; xpnn.cs231n.install()
        from cs231n.features import extract_features
        from cs231n.classifiers import KNearestNeighbor
        import cs231n
        print(cs231n.__file__)
    """))
    import subprocess
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path / "assignment1",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "assignment1" / "cs231n" / "__init__.py")


def test_the_notebooks_autoreload_reloads_the_students_files_and_keeps_xpnns(tmp_path):
    # Every assignment notebook starts with %load_ext autoreload / %autoreload 2.
    write_assignment(tmp_path)
    out = run_python("""
        import pathlib, time
        from IPython.testing.globalipapp import start_ipython
        ip = start_ipython()
        ip.run_line_magic("load_ext", "autoreload")
        ip.run_line_magic("autoreload", "2")
        def cell(source):
            result = ip.run_cell(source)
            assert result.success, result.error_in_exec or result.error_before_exec
        cell("import xpnn.cs231n; xpnn.cs231n.install()\\n"
             "from cs231n.classifiers.fc_net import *\\nimport cs231n.my_helper")
        time.sleep(1.1)                                  # a newer modification time
        pathlib.Path("cs231n/my_helper.py").write_text("ANSWER = 43\\n")
        cell("assert cs231n.my_helper.ANSWER == 43, cs231n.my_helper.ANSWER\\n"
             "assert affine_forward.__module__ == 'xpnn.layers'\\n"
             "from cs231n.solver import Solver\\nassert Solver.__module__ == 'xpnn.solver'")
        print("ok")
    """, cwd=tmp_path)
    assert out.strip().endswith("ok")


def test_a_missing_student_module_names_install_and_the_folder(tmp_path):
    source = """
        import xpnn.cs231n; xpnn.cs231n.install()
        try:
            import cs231n.features
        except ModuleNotFoundError as e:
            assert e.name == "cs231n.features"
            print(e)
    """
    out = run_python(source, cwd=tmp_path)
    assert "No module named 'cs231n.features'" in out
    assert "install()" in out and "no cs231n folder was found on sys.path or in the working" in out
    assert str(tmp_path) in out
    write_assignment(tmp_path, {"cs231n/__init__.py": ""})
    out = run_python(source.replace("cs231n.features", "cs231n.classifiers.softmax"), cwd=tmp_path)
    assert "has no classifiers folder" in out


def test_install_refuses_a_module_it_does_not_provide():
    with pytest.raises(ValueError, match="features"):
        xpnn.cs231n.install(own=("features",))


def test_every_module_of_the_table_is_a_file_of_xpnn():
    # The table is the whole mechanism: another module is one file plus one name.
    from pathlib import Path
    root = Path(xpnn.cs231n.__file__).parent
    for module in xpnn.cs231n.MODULES:
        path = root / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module


def test_star_import_of_fc_net_brings_the_layers():
    ns = {}
    exec("from cs231n.classifiers.fc_net import *", ns)
    for name in ("FullyConnectedNet", "TwoLayerNet", "affine_forward", "batchnorm_forward",
                 "dropout_forward", "affine_relu_forward", "affine_bn_relu_backward",
                 "softmax_loss", "spatial_groupnorm_forward"):
        assert name in ns, name
    ns = {}
    exec("from cs231n.classifiers.cnn import *", ns)
    assert {"ThreeLayerConvNet", "conv_relu_pool_forward", "conv_forward_fast"} <= set(ns)


def test_models_saved_from_the_layout_load_as_xpnn_models(tmp_path):
    from cs231n.classifiers.fc_net import FullyConnectedNet
    from xpnn.models import load
    model = FullyConnectedNet([6], input_dim=4, num_classes=3, dropout=0.5, seed=0)
    model.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert type(loaded) is XpnnFullyConnectedNet and loaded.config == model.config


def test_use_device_cuda_fails_early_without_a_gpu(no_cupy):
    with pytest.raises(RuntimeError, match="cuda"):
        xpnn.cs231n.use_device("cuda")
    assert xpnn.cs231n.default_device() == "cpu"


# ---------------------------------------------------------------------------- layer cells

def test_conv_forward_naive_cell():
    ns = run_cell("""
        x_shape = (2, 3, 4, 4)
        w_shape = (3, 3, 4, 4)
        x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
        w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
        b = np.linspace(-0.1, 0.2, num=3)

        conv_param = {'stride': 2, 'pad': 1}
        out, _ = conv_forward_naive(x, w, b, conv_param)
        correct_out = np.array([[[[-0.08759809, -0.10987781],
                                  [-0.18387192, -0.2109216 ]],
                                 [[ 0.21027089,  0.21661097],
                                  [ 0.22847626,  0.23004637]],
                                 [[ 0.50813986,  0.54309974],
                                  [ 0.64082444,  0.67101435]]],
                                [[[-0.98053589, -1.03143541],
                                  [-1.19128892, -1.24695841]],
                                 [[ 0.69108355,  0.66880383],
                                  [ 0.59480972,  0.56776003]],
                                 [[ 2.36270298,  2.36904306],
                                  [ 2.38090835,  2.38247847]]]])
        difference = rel_error(out, correct_out)
    """)
    assert ns["difference"] < 1e-7


def test_fast_conv_cell_matches_naive():
    ns = run_cell("""
        from cs231n.fast_layers import conv_forward_fast, conv_backward_fast
        np.random.seed(231)
        x = np.random.randn(10, 3, 31, 31)
        w = np.random.randn(25, 3, 3, 3)
        b = np.random.randn(25,)
        dout = np.random.randn(10, 25, 16, 16)
        conv_param = {'stride': 2, 'pad': 1}

        out_naive, cache_naive = conv_forward_naive(x, w, b, conv_param)
        out_fast, cache_fast = conv_forward_fast(x, w, b, conv_param)
        dx_naive, dw_naive, db_naive = conv_backward_naive(dout, cache_naive)
        dx_fast, dw_fast, db_fast = conv_backward_fast(dout, cache_fast)
        errors = [rel_error(out_naive, out_fast), rel_error(dx_naive, dx_fast),
                  rel_error(dw_naive, dw_fast), rel_error(db_naive, db_fast)]
    """)
    assert max(ns["errors"]) < 1e-9    # the notebook: "around e-9 or less"


def test_fast_pool_cell_matches_naive():
    ns = run_cell("""
        from cs231n.fast_layers import max_pool_forward_fast, max_pool_backward_fast
        np.random.seed(231)
        x = np.random.randn(10, 3, 32, 32)
        dout = np.random.randn(10, 3, 16, 16)
        pool_param = {'pool_height': 2, 'pool_width': 2, 'stride': 2}

        out_naive, cache_naive = max_pool_forward_naive(x, pool_param)
        out_fast, cache_fast = max_pool_forward_fast(x, pool_param)
        dx_naive = max_pool_backward_naive(dout, cache_naive)
        dx_fast = max_pool_backward_fast(dout, cache_fast)
        errors = [rel_error(out_naive, out_fast), rel_error(dx_naive, dx_fast)]
    """)
    assert max(ns["errors"]) < 1e-9


def test_fast_layers_equal_naive_ones(xp, rng):
    from cs231n.fast_layers import (conv_backward_fast, conv_forward_fast, max_pool_backward_fast,
                                    max_pool_forward_fast)
    from cs231n.layers import (conv_backward_naive, conv_forward_naive, max_pool_backward_naive,
                               max_pool_forward_naive)
    x = xp.asarray(rng.standard_normal((2, 3, 9, 8)))
    w, b = xp.asarray(rng.standard_normal((4, 3, 3, 2))), xp.asarray(rng.standard_normal(4))
    param = {"stride": 2, "pad": 1}
    out, cache = conv_forward_naive(x, w, b, param)
    out_fast, cache_fast = conv_forward_fast(x, w, b, param)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    np.testing.assert_array_equal(to_numpy(out_fast), to_numpy(out))
    for g, g_fast in zip(conv_backward_naive(dout, cache), conv_backward_fast(dout, cache_fast)):
        np.testing.assert_array_equal(to_numpy(g_fast), to_numpy(g))
    pool = {"pool_height": 3, "pool_width": 2, "stride": 2}
    out, cache = max_pool_forward_naive(x, pool)
    out_fast, cache_fast = max_pool_forward_fast(x, pool)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    np.testing.assert_array_equal(to_numpy(out_fast), to_numpy(out))
    np.testing.assert_array_equal(to_numpy(max_pool_backward_fast(dout, cache_fast)),
                                  to_numpy(max_pool_backward_naive(dout, cache)))


def test_conv_relu_pool_cell():
    ns = run_cell("""
        from cs231n.layer_utils import conv_relu_pool_forward, conv_relu_pool_backward
        np.random.seed(231)
        x = np.random.randn(2, 3, 16, 16)
        w = np.random.randn(3, 3, 3, 3)
        b = np.random.randn(3,)
        dout = np.random.randn(2, 3, 8, 8)
        conv_param = {'stride': 1, 'pad': 1}
        pool_param = {'pool_height': 2, 'pool_width': 2, 'stride': 2}

        out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
        dx, dw, db = conv_relu_pool_backward(dout, cache)

        dx_num = eval_numerical_gradient_array(lambda x: conv_relu_pool_forward(x, w, b, conv_param, pool_param)[0], x, dout)
        dw_num = eval_numerical_gradient_array(lambda w: conv_relu_pool_forward(x, w, b, conv_param, pool_param)[0], w, dout)
        db_num = eval_numerical_gradient_array(lambda b: conv_relu_pool_forward(x, w, b, conv_param, pool_param)[0], b, dout)
        errors = [rel_error(dx_num, dx), rel_error(dw_num, dw), rel_error(db_num, db)]
    """)
    assert max(ns["errors"]) < 1e-7    # the notebook: "around e-8 or less"


def test_groupnorm_forward_cell():
    ns = run_cell("""
        np.random.seed(231)
        N, C, H, W = 2, 6, 4, 5
        G = 2
        x = 4 * np.random.randn(N, C, H, W) + 10
        x_g = x.reshape((N*G,-1))
        before_means, before_stds = x_g.mean(axis=1), x_g.std(axis=1)

        gamma, beta = np.ones((1,C,1,1)), np.zeros((1,C,1,1))
        bn_param = {'mode': 'train'}

        out, _ = spatial_groupnorm_forward(x, gamma, beta, G, bn_param)
        out_g = out.reshape((N*G,-1))
        after_means, after_stds = out_g.mean(axis=1), out_g.std(axis=1)
    """)
    # The notebook's printed input statistics: the cell ran on the published input.
    assert rel_error(ns["before_means"], [9.72505327, 8.51114185, 8.9147544, 9.43448077]) < 1e-8
    assert rel_error(ns["before_stds"], [3.67070958, 3.09892597, 4.27043622, 3.97521327]) < 1e-8
    # Each group normalized: mean 0, std sqrt(var / (var + eps)) with the default eps 1e-5.
    var = ns["before_stds"] ** 2
    assert np.max(np.abs(ns["after_means"])) < 1e-12
    assert rel_error(ns["after_stds"], np.sqrt(var / (var + 1e-5))) < 1e-10
    assert ns["out"].shape == (2, 6, 4, 5)


def test_groupnorm_backward_cell():
    ns = run_cell("""
        np.random.seed(231)
        N, C, H, W = 2, 6, 4, 5
        G = 2
        x = 5 * np.random.randn(N, C, H, W) + 12
        gamma = np.random.randn(1,C,1,1)
        beta = np.random.randn(1,C,1,1)
        dout = np.random.randn(N, C, H, W)

        gn_param = {}
        fx = lambda x: spatial_groupnorm_forward(x, gamma, beta, G, gn_param)[0]
        fg = lambda a: spatial_groupnorm_forward(x, gamma, beta, G, gn_param)[0]
        fb = lambda b: spatial_groupnorm_forward(x, gamma, beta, G, gn_param)[0]

        dx_num = eval_numerical_gradient_array(fx, x, dout)
        da_num = eval_numerical_gradient_array(fg, gamma, dout)
        db_num = eval_numerical_gradient_array(fb, beta, dout)

        _, cache = spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
        dx, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
        errors = [rel_error(dx_num, dx), rel_error(da_num, dgamma), rel_error(db_num, dbeta)]
    """)
    assert max(ns["errors"]) < 1e-7    # the notebook: "between 1e-12~1e-07"
    assert ns["dgamma"].shape == ns["dbeta"].shape == (1, 6, 1, 1)


@pytest.mark.parametrize("G", [1, 2, 6])
@pytest.mark.parametrize("param_shape", ["assignment", "flat"])
def test_groupnorm_gradients(xp, rng, G, param_shape):
    C = 6
    shape = (1, C, 1, 1) if param_shape == "assignment" else (C,)
    x = xp.asarray(3 * rng.standard_normal((3, C, 4, 5)) + 2)
    gamma, beta = xp.asarray(rng.standard_normal(shape)), xp.asarray(rng.standard_normal(shape))
    def fwd(x, gamma, beta):
        return spatial_groupnorm_forward(x, gamma, beta, G, {})
    check_layer(xp, rng, fwd, spatial_groupnorm_backward, [x, gamma, beta], tol=1e-6)


def test_groupnorm_independent_forward(xp, rng):
    # G = C normalizes every (sample, channel) image on its own (instance norm).
    x = rng.standard_normal((2, 4, 3, 3)) * 2 + 5
    gamma, beta = rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1))
    out, _ = spatial_groupnorm_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), 4,
                                       {"eps": 1e-3})
    mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    assert rel_error(out, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta) < 1e-10


def test_groupnorm_rejects_groups_that_do_not_divide_the_channels():
    x, gamma = np.zeros((1, 6, 2, 2)), np.ones((1, 6, 1, 1))
    with pytest.raises(ValueError, match="divide the 6 channels"):
        spatial_groupnorm_forward(x, gamma, gamma, 4, {})


def test_dropout_cell_with_keep_probability():
    ns = run_cell("""
        np.random.seed(231)
        x = np.random.randn(500, 500) + 10
        zero_fractions = {}
        for p in [0.25, 0.4, 0.7]:
            out, _ = dropout_forward(x, {'mode': 'train', 'p': p})
            out_test, _ = dropout_forward(x, {'mode': 'test', 'p': p})
            zero_fractions[p] = (out == 0).mean()
            assert out_test is x or np.array_equal(out_test, x)
    """)
    for p, zero in ns["zero_fractions"].items():
        assert abs(zero - (1 - p)) < 0.01


# ---------------------------------------------------------------------------- sandwich layers

def _check_sandwich(xp, rng, forward, backward, inputs, zero_gradient=(), tol=1e-6):
    """check_layer, except that the gradients numbered in `zero_gradient` (a bias feeding
    batchnorm: exactly zero, see tests/test_models.model_grad_errors) are checked as ~0."""
    out, cache = forward(*inputs)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)))
    grads = backward(dout, cache)
    assert len(grads) == len(inputs)
    for k, g in enumerate(grads):
        num = eval_numerical_gradient_array(lambda _: forward(*inputs)[0], inputs[k], dout)
        assert type(g) is type(inputs[k]) and tuple(g.shape) == tuple(inputs[k].shape)
        if k in zero_gradient:
            assert max(np.max(np.abs(to_numpy(num))), np.max(np.abs(to_numpy(g)))) < 1e-8
        else:
            assert rel_error(g, num) < tol, f"gradient {k}: rel error {rel_error(g, num)}"


def test_affine_sandwiches(xp, rng):
    from cs231n.layer_utils import (affine_bn_relu_backward, affine_bn_relu_forward,
                                    affine_ln_relu_backward, affine_ln_relu_forward,
                                    affine_relu_backward, affine_relu_forward)
    x, w, b = (xp.asarray(rng.standard_normal(s)) for s in ((4, 2, 3), (6, 5), (5,)))
    gamma, beta = xp.asarray(rng.standard_normal(5) + 1), xp.asarray(rng.standard_normal(5))
    _check_sandwich(xp, rng, affine_relu_forward, affine_relu_backward, [x, w, b])
    _check_sandwich(xp, rng, lambda *a: affine_bn_relu_forward(*a, {"mode": "train"}),
                    affine_bn_relu_backward, [x, w, b, gamma, beta], zero_gradient={2})
    _check_sandwich(xp, rng, lambda *a: affine_ln_relu_forward(*a, {}),
                    affine_ln_relu_backward, [x, w, b, gamma, beta])


def test_conv_sandwiches(xp, rng):
    from cs231n.layer_utils import (conv_bn_relu_backward, conv_bn_relu_forward,
                                    conv_relu_backward, conv_relu_forward)
    x, w, b = (xp.asarray(rng.standard_normal(s)) for s in ((2, 2, 4, 6), (3, 2, 3, 3), (3,)))
    gamma, beta = xp.asarray(rng.standard_normal(3) + 1), xp.asarray(rng.standard_normal(3))
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    _check_sandwich(xp, rng, lambda *a: conv_relu_forward(*a, conv_param), conv_relu_backward,
                    [x, w, b])
    _check_sandwich(xp, rng, lambda *a: conv_relu_pool_forward(*a, conv_param, pool_param),
                    conv_relu_pool_backward, [x, w, b])
    _check_sandwich(xp, rng, lambda *a: conv_bn_relu_forward(*a, conv_param, {"mode": "train"}),
                    conv_bn_relu_backward, [x, w, b, gamma, beta], zero_gradient={2})


def test_the_assignments_own_layer_utils_runs_on_xpnn(rng):
    # A layer_utils.py of the assignment's form: relative star imports of layers and
    # fast_layers, sandwiches written with the _fast names. Run as a module of `cs231n`.
    import types
    source = textwrap.dedent("""
        from .layers import *
        from .fast_layers import *

        def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
            a, conv_cache = conv_forward_fast(x, w, b, conv_param)
            s, relu_cache = relu_forward(a)
            out, pool_cache = max_pool_forward_fast(s, pool_param)
            return out, (conv_cache, relu_cache, pool_cache)

        def conv_relu_pool_backward(dout, cache):
            conv_cache, relu_cache, pool_cache = cache
            ds = max_pool_backward_fast(dout, pool_cache)
            da = relu_backward(ds, relu_cache)
            return conv_backward_fast(da, conv_cache)
    """)
    module = types.ModuleType("cs231n.student_layer_utils")
    module.__package__ = "cs231n"
    exec(compile(source, "layer_utils.py", "exec"), module.__dict__)
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = module.conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    expected, expected_cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    np.testing.assert_array_equal(out, expected)
    dout = rng.standard_normal(out.shape)
    for g, g_expected in zip(module.conv_relu_pool_backward(dout, cache),
                             conv_relu_pool_backward(dout, expected_cache)):
        np.testing.assert_array_equal(g, g_expected)


def test_sandwiches_pass_their_params_through_untouched(rng):
    # Parameter-key validation refuses unknown keys: a sandwich must add none.
    from cs231n.layer_utils import conv_bn_relu_forward
    conv_param, bn_param = {"stride": 1, "pad": 1}, {"mode": "train"}
    x, w, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3)), np.zeros(2)
    conv_bn_relu_forward(x, w, b, np.ones(2), np.zeros(2), conv_param, bn_param)
    assert set(conv_param) == {"stride", "pad"}
    assert set(bn_param) == {"mode", "running_mean", "running_var"}   # what batchnorm stores


# ---------------------------------------------------------------------------- models and Solver

def test_fc_net_dropout_cell_equals_dropout_keep_ratio():
    # The 2019-2020 FullyConnectedNets/Dropout cell, with `dropout=`; then the 2021 spelling.
    cell = """
        np.random.seed(231)
        N, D, H1, H2, C = 2, 15, 20, 30, 10
        X = np.random.randn(N, D)
        y = np.random.randint(C, size=(N,))

        results = {}
        for dropout in [1, 0.75, 0.5]:
            model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C,
                                      weight_scale=5e-2, dtype=np.float64,
                                      KEYWORD=dropout, seed=123)
            loss, grads = model.loss(X, y)
            errors = {}
            for name in sorted(grads):
                f = lambda _: model.loss(X, y)[0]
                grad_num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-5)
                errors[name] = rel_error(grad_num, grads[name])
            results[dropout] = (loss, grads, errors, model.dropout_param)
    """
    old = run_cell(cell.replace("KEYWORD", "dropout"))["results"]
    new = run_cell(cell.replace("KEYWORD", "dropout_keep_ratio"))["results"]
    for keep in (1, 0.75, 0.5):
        (loss, grads, errors, param), (loss2, grads2, _, param2) = old[keep], new[keep]
        assert loss == loss2 and param == param2
        assert all(np.array_equal(grads[k], grads2[k]) for k in grads)
        assert max(errors.values()) < 1e-5, errors
        assert param.get("p", 1) == keep       # the keep probability, as in 2019's dropout_param
    assert old[1][0] != old[0.5][0]            # dropout changed the loss


def test_fc_net_refuses_both_dropout_names():
    from cs231n.classifiers.fc_net import FullyConnectedNet
    with pytest.raises(TypeError, match="not both"):
        FullyConnectedNet([5], input_dim=3, dropout=0.5, dropout_keep_ratio=0.5)


def test_two_layer_net_cell():
    # The TwoLayerNet cell of the assignment (in fc_net since 2019), published numbers.
    ns = run_cell("""
        np.random.seed(231)
        N, D, H, C = 3, 5, 50, 7
        X = np.random.randn(N, D)
        y = np.random.randint(C, size=N)

        std = 1e-3
        model = TwoLayerNet(input_dim=D, hidden_dim=H, num_classes=C, weight_scale=std)
        W1_std = abs(model.params['W1'].std() - std)
        b1 = model.params['b1']
        assert W1_std < std / 10, 'First layer weights do not seem right'
        assert np.all(b1 == 0), 'First layer biases do not seem right'

        model.params['W1'] = np.linspace(-0.7, 0.3, num=D*H).reshape(D, H)
        model.params['b1'] = np.linspace(-0.1, 0.9, num=H)
        model.params['W2'] = np.linspace(-0.3, 0.4, num=H*C).reshape(H, C)
        model.params['b2'] = np.linspace(-0.9, 0.1, num=C)
        X = np.linspace(-5.5, 4.5, num=N*D).reshape(D, N).T
        scores = model.loss(X)
        correct_scores = np.asarray(
          [[11.53165108,  12.2917344,   13.05181771,  13.81190102,  14.57198434, 15.33206765,  16.09215096],
           [12.05769098,  12.74614105,  13.43459113,  14.1230412,   14.81149128, 15.49994135,  16.18839143],
           [12.58373087,  13.20054771,  13.81736455,  14.43418138,  15.05099822, 15.66781506,  16.2846319 ]])
        scores_diff = np.abs(scores - correct_scores).sum()
        assert scores_diff < 1e-6, 'Problem with test-time forward pass'

        y = np.asarray([0, 5, 1])
        loss, grads = model.loss(X, y)
        correct_loss = 3.4702243556
        assert abs(loss - correct_loss) < 1e-10, 'Problem with training-time loss'

        model.reg = 1.0
        loss, grads = model.loss(X, y)
        correct_loss = 26.5948426952
        assert abs(loss - correct_loss) < 1e-10, 'Problem with regularization loss'
    """)
    assert ns["scores_diff"] < 1e-6


def test_three_layer_convnet_cells():
    ns = run_cell("""
        model = ThreeLayerConvNet()

        N = 50
        X = np.random.randn(N, 3, 32, 32)
        y = np.random.randint(10, size=N)

        loss, grads = model.loss(X, y)
        loss_no_reg = loss
        model.reg = 0.5
        loss, grads = model.loss(X, y)
        loss_with_reg = loss

        num_inputs = 2
        input_dim = (3, 16, 16)
        reg = 0.0
        num_classes = 10
        np.random.seed(231)
        X = np.random.randn(num_inputs, *input_dim)
        y = np.random.randint(num_classes, size=num_inputs)

        model = ThreeLayerConvNet(
            num_filters=3,
            filter_size=3,
            input_dim=input_dim,
            hidden_dim=7,
            dtype=np.float64
        )
        loss, grads = model.loss(X, y)
        errors = {}
        for param_name in sorted(model.params):
            f = lambda _: model.loss(X, y)[0]
            param_grad_num = eval_numerical_gradient(f, model.params[param_name], verbose=False, h=1e-6)
            errors[param_name] = rel_error(param_grad_num, grads[param_name])
    """)
    # Small weights give near-uniform scores: the loss starts at log(10); reg adds to it.
    assert abs(ns["loss_no_reg"] - np.log(10)) < 0.01
    assert ns["loss_with_reg"] > ns["loss_no_reg"] + 0.1
    # The notebook: "correct implementations may have relative errors up to the order of e-2"
    # (weights of 1e-3 leave gradients near round-off); tests/test_models checks to 1e-4.
    assert max(ns["errors"].values()) < 5e-2, ns["errors"]


def test_reg_set_after_construction_adds_to_the_loss():
    from cs231n.classifiers.cnn import ThreeLayerConvNet
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=5,
                              dtype=np.float64, seed=0)
    data_loss, _ = model.loss(X, y)
    model.reg = 0.5
    loss, _ = model.loss(X, y)
    penalty = 0.25 * sum(float(np.sum(model.params[w] ** 2)) for w in ("W1", "W2", "W3"))
    assert abs(loss - data_loss - penalty) < 1e-12


def test_solver_cell_overfits_small_data():
    ns = run_cell("""
        rng = np.random.RandomState(0)
        num_train = 50
        X, y = rng.randn(num_train, 3, 8, 8), rng.randint(10, size=num_train)
        small_data = {'X_train': X, 'y_train': y, 'X_val': X, 'y_val': y}

        weight_scale = 1e-1
        learning_rate = 1e-3
        model = FullyConnectedNet([100, 100], input_dim=3 * 8 * 8, weight_scale=weight_scale,
                                  dtype=np.float64, seed=0)
        solver = Solver(model, small_data,
                        print_every=100, num_epochs=20, batch_size=25,
                        update_rule='adam',
                        optim_config={
                          'learning_rate': learning_rate,
                        },
                        verbose=False, seed=0
                 )
        solver.train()
        train_acc = solver.check_accuracy(small_data['X_train'], small_data['y_train'])
    """)
    assert ns["train_acc"] == 1.0
    assert len(ns["solver"].loss_history) == 40 and ns["solver"].loss_history[-1] < 0.5


def test_numpy_cells_meet_a_model_on_another_device():
    # What install(device="cuda") relies on, with array-api-strict standing in for the GPU:
    # the notebook's NumPy params and inputs are copied to the model's device, scores come home.
    import array_api_strict as xps
    from cs231n.classifiers.fc_net import TwoLayerNet
    from xpnn.backend import backend_of
    model = TwoLayerNet(input_dim=5, hidden_dim=50, num_classes=7)
    model.backend = backend_of(xps.asarray(np.zeros(1)))
    model.params = {k: model.backend.to_device(v) for k, v in model.params.items()}
    ns = run_cell("""
        model.params['W1'] = np.linspace(-0.7, 0.3, num=5*50).reshape(5, 50)
        model.params['b1'] = np.linspace(-0.1, 0.9, num=50)
        model.params['W2'] = np.linspace(-0.3, 0.4, num=50*7).reshape(50, 7)
        model.params['b2'] = np.linspace(-0.9, 0.1, num=7)
        X = np.linspace(-5.5, 4.5, num=3*5).reshape(5, 3).T
        scores = model.loss(X)
        loss, grads = model.loss(X, np.asarray([0, 5, 1]))
    """, {**run_cell(""), "model": model})
    assert isinstance(ns["scores"], np.ndarray)
    assert abs(ns["scores"][0, 0] - 11.53165108) < 1e-7 and abs(ns["loss"] - 3.4702243556) < 1e-10
    assert all(model.backend.owns(v) for v in model.params.values())
    assert all(model.backend.owns(g) for g in ns["grads"].values())


@pytest.mark.gpu
def test_two_layer_net_cell_on_the_gpu():
    # `install(device="cuda")`: the same cell, the model on the GPU, NumPy in and out.
    xpnn.cs231n.use_device("cuda")
    try:
        ns = run_cell("""
            model = TwoLayerNet(input_dim=5, hidden_dim=50, num_classes=7)
            model.params['W1'] = np.linspace(-0.7, 0.3, num=5*50).reshape(5, 50)
            model.params['b1'] = np.linspace(-0.1, 0.9, num=50)
            model.params['W2'] = np.linspace(-0.3, 0.4, num=50*7).reshape(50, 7)
            model.params['b2'] = np.linspace(-0.9, 0.1, num=7)
            X = np.linspace(-5.5, 4.5, num=3*5).reshape(5, 3).T
            scores = model.loss(X)
            loss, grads = model.loss(X, np.asarray([0, 5, 1]))
        """)
    finally:
        xpnn.cs231n.use_device("cpu")
    assert ns["model"].device == "cuda:0" and isinstance(ns["scores"], np.ndarray)
    assert abs(ns["loss"] - 3.4702243556) < 1e-10
    assert abs(ns["scores"][0, 0] - 11.53165108) < 1e-7


# ---------------------------------------------------------------------------- gradient_check

def test_grad_check_sparse_reports_right_and_wrong_gradients(capsys):
    from cs231n.gradient_check import grad_check_sparse
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 4))
    f = lambda W: float(np.sum(W ** 3))
    grad_check_sparse(f, W, 3 * W ** 2, num_checks=6)
    grad_check_sparse(f, W, 2 * W ** 2, num_checks=6)
    lines = capsys.readouterr().out.strip().splitlines()
    errors = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert len(errors) == 12 and lines[0].startswith("numerical: ")
    assert max(errors[:6]) < 1e-7 and min(errors[6:]) > 0.1


def test_blob_gradients():
    from cs231n.gradient_check import eval_numerical_gradient_blobs, eval_numerical_gradient_net

    class Blob:
        def __init__(self, vals):
            self.vals, self.diffs = vals, np.zeros_like(vals)

    rng = np.random.default_rng(0)
    a, b = Blob(rng.standard_normal((3, 4))), Blob(rng.standard_normal((3, 4)))
    out = Blob(np.zeros((3, 4)))
    out.diffs = rng.standard_normal((3, 4))

    def multiply(a, b, out):          # out = a * b: d/da = b * diffs, d/db = a * diffs
        out.vals[...] = a.vals * b.vals

    da, db = eval_numerical_gradient_blobs(multiply, (a, b), out)
    assert rel_error(da, b.vals * out.diffs) < 1e-8 and rel_error(db, a.vals * out.diffs) < 1e-8

    class Net:
        def forward(self):
            multiply(a, b, out)

    (da_net,) = eval_numerical_gradient_net(Net(), (a,), out)
    assert rel_error(da_net, da) < 1e-12


def test_visualize_grid():
    from cs231n.vis_utils import visualize_grid
    rng = np.random.default_rng(0)
    filters = rng.standard_normal((5, 3, 4, 4))
    grid = visualize_grid(filters.transpose(0, 2, 3, 1), padding=1)
    assert grid.shape == (3 * 4 + 2, 3 * 4 + 2, 3)      # 3 x 3 tiles for 5 images
    first = grid[:4, :4]
    assert first.min() == 0 and first.max() == 255
    assert np.allclose(first, 255 * (filters[0].transpose(1, 2, 0) - filters[0].min())
                       / np.ptp(filters[0]))
    assert np.all(grid[4, :] == 0) and np.all(grid[-4:, -4:] == 0)   # padding, empty tiles


# ---------------------------------------------------------------------------- data_utils

@pytest.fixture
def cifar_dir(tmp_path):
    """A small CIFAR-10 batches directory: 5 training batches of 8 images, a test batch of 6."""
    rng = np.random.default_rng(5)
    root = tmp_path / "cs231n" / "datasets" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 6 if name == "test_batch" else 8
        X, y = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)
        write_cifar_batch(root / name, X, y)
        raw[name] = (X, y)
    X_train = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])
    return root, (X_train, y_train, *raw["test_batch"])


def test_get_cifar10_data_splits_and_subtracts_the_mean(cifar_dir):
    from cs231n.data_utils import get_CIFAR10_data
    root, (X_train, y_train, X_test, y_test) = cifar_dir
    data = get_CIFAR10_data(num_training=30, num_validation=10, num_test=4, cifar10_dir=root)
    assert list(data) == ["X_train", "y_train", "X_val", "y_val", "X_test", "y_test"]
    mean = X_train[:30].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(data["X_train"], X_train[:30] - mean, atol=1e-12)
    np.testing.assert_allclose(data["X_val"], X_train[30:40] - mean, atol=1e-12)
    np.testing.assert_allclose(data["X_test"], X_test[:4] - mean, atol=1e-12)
    np.testing.assert_array_equal(data["y_val"], y_train[30:40])
    np.testing.assert_array_equal(data["y_test"], y_test[:4])
    assert data["X_train"].dtype == np.float64 and data["y_train"].dtype == np.int64
    raw = get_CIFAR10_data(num_training=30, num_validation=10, num_test=4, subtract_mean=False,
                           cifar10_dir=root)
    np.testing.assert_array_equal(raw["X_val"], X_train[30:40])          # pixels stay in [0, 255]


def test_get_cifar10_data_finds_the_assignments_folder(cifar_dir, monkeypatch):
    root, (X_train, *_) = cifar_dir
    monkeypatch.delenv("XPNN_CIFAR10_DIR", raising=False)
    monkeypatch.chdir(root.parents[2])          # the assignment's folder, as a notebook runs
    ns = run_cell("data = get_CIFAR10_data(num_training=20, num_validation=5, num_test=5)")
    assert ns["data"]["X_train"].shape == (20, 3, 32, 32)
    monkeypatch.chdir(root.parents[3])
    with pytest.raises(DataError, match="XPNN_CIFAR10_DIR"):
        run_cell("data = get_CIFAR10_data()")
    monkeypatch.setenv("XPNN_CIFAR10_DIR", str(root))
    assert run_cell("data = get_CIFAR10_data(30, 10, 6)")["data"]["X_test"].shape[0] == 6


def test_get_cifar10_data_refuses_a_split_larger_than_the_set(cifar_dir):
    from cs231n.data_utils import get_CIFAR10_data
    with pytest.raises(ValueError, match="too few"):
        get_CIFAR10_data(cifar10_dir=cifar_dir[0])


def test_load_cifar10_is_channels_last(cifar_dir):
    from cs231n.data_utils import load_CIFAR10
    root, (X_train, y_train, X_test, y_test) = cifar_dir
    Xtr, Ytr, Xte, Yte = load_CIFAR10(root)
    assert Xtr.shape == (40, 32, 32, 3) and Xtr.dtype == np.float64
    np.testing.assert_array_equal(Xtr, X_train.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(Yte, y_test)

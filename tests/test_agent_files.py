"""The 2016 script's agent files (save.p) open here, and --export --format 2016 writes one it opens."""
import os
import pickle
import struct

import numpy as np
import pytest

import checkpoint
import cli
import pong_pg_fast
import training_run
from checkpoint import CheckpointError
from conftest import run


def model_2016(hidden=8, seed=0):
    """A model as the 2016 script makes it: float64 W1 (H, 6400) and W2 (H,)."""
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((hidden, 6400)) / np.sqrt(6400),
            "W2": rng.standard_normal(hidden) / np.sqrt(hidden)}


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did (protocol 2): bytes as Python 2 strings (BINSTRING), which
    Python 3 reads only with encoding='latin1'."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def python2_pickle(obj):
    import io
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def test_a_2016_save_p_from_python_3_plays_here(tmp_path):
    model = model_2016()
    with open(tmp_path / "save.p", "wb") as f:
        pickle.dump(model, f)                                   # exactly as the 2016 script saves
    result = run("--eval", 1, "--workers", 1, "--checkpoint", tmp_path / "save.p", "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "greedy policy: mean score" in result.stdout


def test_a_2016_save_p_from_python_2_opens_too(tmp_path):
    model = model_2016(hidden=5, seed=1)
    data = python2_pickle(model)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)                                      # what a plain Python 3 load says
    (tmp_path / "save.p").write_bytes(data)
    agent = checkpoint.load(tmp_path / "save.p")
    for k in ("W1", "W2"):
        assert agent["model"][k].dtype == np.float32
        np.testing.assert_array_equal(agent["model"][k], model[k].astype(np.float32))
    assert agent["hyper"]["hidden"] == 5


@pytest.mark.parametrize("content, says", [
    ([np.zeros((8, 6400)), np.zeros(8)], "not a pong_pg checkpoint"),
    ({"W1": np.zeros((8, 6400))}, "not an agent file"),
    ({"W1": np.zeros((8, 6400)), "W2": np.zeros(8), "b": np.zeros(8)}, "not an agent file"),
    ({"W1": np.zeros((8, 100)), "W2": np.zeros(8)}, "do not fit 6400 inputs"),
    ({"W1": np.zeros((8, 6400)), "W2": np.zeros(7)}, "do not fit 6400 inputs"),
    ({"W1": np.zeros((8, 6400), np.int64), "W2": np.zeros(8)}, "not an array of floats"),
    ({"W1": np.full((8, 6400), np.nan), "W2": np.zeros(8)}, "non-finite"),
])
def test_files_that_are_not_2016_agents_get_one_line(tmp_path, content, says):
    (tmp_path / "save.p").write_bytes(pickle.dumps(content))
    result = run("--eval", 1, "--workers", 1, "--checkpoint", tmp_path / "save.p", "--checkpoint-dir", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert os.listdir(tmp_path) == ["save.p"]                  # nothing written


def test_a_hostile_pickle_beside_arrays_runs_nothing(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    (tmp_path / "save.p").write_bytes(pickle.dumps({"W1": np.zeros((8, 6400)), "W2": Payload()}))
    with pytest.raises(CheckpointError, match="refusing to load"):
        checkpoint.load(tmp_path / "save.p")
    result = run("--play", "--checkpoint", tmp_path / "save.p", "--checkpoint-dir", tmp_path)
    assert result.returncode == 2 and "refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == ["save.p"]                  # nothing run, nothing written


def test_export_format_2016_is_what_the_2016_script_loads_and_plays(tmp_path, real_steps):
    exported = tmp_path / "save.p"
    result = run("--export", exported, "--format", "2016", "--checkpoint", cli.SHIPPED_AGENT)
    assert result.returncode == 0, result.stderr
    with open(exported, "rb") as f:
        model = pickle.load(f)                                  # the 2016 script's own load
    assert set(model) == {"W1", "W2"} and model["W1"].dtype == model["W2"].dtype == np.float64
    assert model["W1"].shape == (200, 6400) and model["W2"].shape == (200,)
    weights = pong_pg_fast.play_weights(training_run.load_agent(cli.SHIPPED_AGENT)["model"])
    (indptr, idx, vals), X = real_steps
    for t in (10, 120, 300):
        h = np.dot(model["W1"], X[t])                          # the 2016 policy_forward
        h[h < 0] = 0
        p_2016 = 1.0 / (1.0 + np.exp(-np.dot(model["W2"], h)))
        sl = slice(indptr[t], indptr[t + 1])
        p_ours, _ = pong_pg_fast.policy_forward_sparse(weights, idx[sl].astype(np.intp), vals[sl].astype(np.float32))
        assert abs(p_2016 - p_ours) < 1e-5


def test_format_goes_with_export(tmp_path):
    result = run("--format", "2016", "--checkpoint-dir", tmp_path)
    assert result.returncode == 2 and "--format goes with --export" in result.stderr

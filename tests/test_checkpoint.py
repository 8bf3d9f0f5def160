import os
import pickle

import numpy as np
import pytest

import checkpoint
from checkpoint import CheckpointError
from conftest import run


def sample_state():
    rng = np.random.default_rng(0)
    return {"model": {"W1": rng.standard_normal((4, 6)).astype(np.float32), "W2": rng.standard_normal(4)},
            "episode": 12, "wall_seconds": 3.5, "running_mean": None, "name": "x",
            "nested": {"counts": [1, 2, 3], "pair": (1, "a")}, "flag": True,
            "big": 2 ** 100, "ints": np.arange(5, dtype=np.int16)}


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "c.pkl"
    state = sample_state()
    checkpoint.save(path, state)
    loaded = checkpoint.load(path)
    assert loaded.keys() == state.keys()
    for k in ("W1", "W2"):
        assert loaded["model"][k].dtype == state["model"][k].dtype
        np.testing.assert_array_equal(loaded["model"][k], state["model"][k])
    np.testing.assert_array_equal(loaded["ints"], state["ints"])
    assert loaded["ints"].dtype == np.int16
    for k in ("episode", "wall_seconds", "running_mean", "name", "nested", "flag", "big"):
        assert loaded[k] == state[k]
    loaded["model"]["W1"][0, 0] = 1.0        # arrays come back writable


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="Windows files have no permission bits")
def test_a_new_file_gets_the_users_umask_and_a_replaced_one_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "c.pkl"
    checkpoint.save(path, {"episode": 1})
    assert os.stat(path).st_mode & 0o777 == 0o644          # as any file the user writes, not mkstemp's 0600
    os.chmod(path, 0o600)                                  # the user makes it private
    checkpoint.save(path, {"episode": 2})
    assert os.stat(path).st_mode & 0o777 == 0o600 and checkpoint.load(path) == {"episode": 2}


@pytest.mark.skipif(os.name != "posix", reason="Windows files have no permission bits")
@pytest.mark.parametrize("form", ["pong_pg", "2016"])
def test_an_exported_agent_is_readable_like_any_file(tmp_path, one_episode_run, umask_022, form):
    exported = tmp_path / "agent.pkl"
    result = run("--export", exported, "--format", form, "--checkpoint", one_episode_run / "pong_pg.pkl")
    assert result.returncode == 0, result.stderr
    assert os.stat(exported).st_mode & 0o777 == 0o644


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "c.pkl"
    checkpoint.save(path, {"episode": 1})
    checkpoint.save(path, {"episode": 2})
    assert checkpoint.load(path) == {"episode": 2}
    assert os.listdir(tmp_path) == ["c.pkl"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    content = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "state": {"x": Payload(marker)}}
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(CheckpointError, match="refusing to load"):
        checkpoint.load(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())          # proof that the file really carries a working payload
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"not a pickle at all", "damaged or not a pong_pg checkpoint"),
    (pickle.dumps({"some": "dict"}), "not a pong_pg checkpoint"),
    (pickle.dumps([1, 2, 3]), "not a pong_pg checkpoint"),
    (pickle.dumps({"format": checkpoint.FORMAT, "version": 99, "state": {}}), "format version 99"),
])
def test_unusable_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        checkpoint.load(path)
    assert "\n" not in str(error.value)
    assert path.read_bytes() == content      # left untouched


def test_truncated_checkpoint_at_every_length_is_refused(tmp_path):
    path = tmp_path / "c.pkl"
    checkpoint.save(path, sample_state())
    data = path.read_bytes()
    for cut in sorted(set(np.linspace(1, len(data) - 1, 60).astype(int))):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            checkpoint.load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nothing.pkl")

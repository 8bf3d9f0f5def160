import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from preprocess import dense_difference, difference_values, preprocess, sparse_difference  # noqa: E402
from rollout import DOWN, UP, make_env  # noqa: E402


@pytest.fixture(scope="session")
def real_game():
    """The first 400 steps of a real ALE/Pong-v5 game with random UP/DOWN actions: the RGB frames and
    ALE's palette-index screens of the same steps."""
    env = make_env(obs_type="rgb")
    obs, _ = env.reset(seed=123)
    rng = np.random.default_rng(0)
    frames, screens = [obs], [env.unwrapped.ale.getScreen()]
    for _ in range(400):
        obs, _, terminated, truncated, _ = env.step(UP if rng.random() < 0.5 else DOWN)
        frames.append(obs); screens.append(env.unwrapped.ale.getScreen())
        assert not (terminated or truncated)
    env.close()
    return frames, screens


@pytest.fixture(scope="session")
def real_frames(real_game):
    return real_game[0]


@pytest.fixture(scope="session")
def real_steps(real_frames):
    """The same game as the policy sees it: sparse CSR frames and the dense (T, 6400) matrix."""
    counts, idxs, vals, dense = [], [], [], []
    previous = None
    for frame in real_frames:
        current = preprocess(frame)
        idx, on = sparse_difference(current, previous)
        dense.append(dense_difference(current, previous))
        idxs.append(idx.astype(np.int16)); vals.append(difference_values(on).astype(np.int8))
        counts.append(len(idx))
        previous = current
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return (indptr, np.concatenate(idxs), np.concatenate(vals)), np.array(dense)

"""Memory does not grow with the length of an episode."""
import tracemalloc

import numpy as np

from conftest import random_weights
from pong_pg import Hyperparameters, PlainEpisode, batch_gradient_plain, init_model
from pong_pg_fast import BatchGradient, SparseEpisode, play_episode
from workers import make_env, task_rng


def long_episode(real_steps, steps):
    """A synthetic episode of `steps` steps made of the real game's frames, repeated."""
    (indptr, idx, vals), X = real_steps
    T = len(indptr) - 1
    reps = -(-steps // T)
    counts = np.tile(np.diff(indptr), reps)[:steps]
    new_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    nnz = new_indptr[-1]
    rewards = np.zeros(steps, np.int8)
    rewards[::150] = -1                      # a point every 150 steps
    up = (np.arange(steps) % 3 == 0).astype(np.uint8)
    return (new_indptr, np.tile(idx, reps)[:nnz], np.tile(vals, reps)[:nnz]), up, rewards


def peak_bytes_of_learning_from(frames, up, rewards, weights):
    batch = BatchGradient(200)               # its accumulators exist before the episode arrives
    episode = SparseEpisode(*frames, up, rewards)
    tracemalloc.start()
    batch.add_episode(weights, episode, 0.99)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_learning_from_an_episode_takes_a_few_mb_and_at_most_48_bytes_more_a_step(real_steps):
    """The backward pass works on 128-step slices, so only the per-step returns and their weightings
    (R, 1) grow with the episode: 32 bytes a step in float64. Beside them: the episode's sums for the
    pixels it touched, 2H numbers a pixel in float64 and again in float32 as they are sent."""
    weights = random_weights(0)
    short = peak_bytes_of_learning_from(*long_episode(real_steps, 1_000), weights)
    long = peak_bytes_of_learning_from(*long_episode(real_steps, 20_000), weights)
    assert (long - short) / 19_000 <= 48, (short, long)
    touched = len(np.unique(long_episode(real_steps, 20_000)[0][1]))
    assert long < touched * 400 * (8 + 4) + 20_000 * 48 + 2_000_000, (long, touched)   # 2 MB: one slice's work


def test_an_episode_is_stored_in_about_100_bytes_a_step():
    env = make_env()
    env.reset(seed=5)
    episode = play_episode(env, random_weights(0), task_rng(0, 0))
    stored = sum(a.nbytes for a in (episode.indptr, episode.idx, episode.vals, episode.up, episode.rewards))
    assert stored / episode.steps < 200        # a dense float64 frame would be 51,200 bytes


def test_the_plain_batch_gradient_holds_one_episodes_frames_as_floats_at_a_time():
    """batch_gradient_plain keeps the batch's frames as int8 and runs the backward pass one episode at
    a time: beside the batch, its peak is one episode's frames in float64 and a few gradients, not the
    whole batch's frames as floats (ten 5,000-step games would take 2.5 GB)."""
    rng = np.random.default_rng(0)
    model = {k: v.astype(np.float64) for k, v in init_model(200, rng).items()}
    steps, episodes = 1_500, []
    for _ in range(4):
        xs = np.zeros((steps, 6400), np.int8)
        xs[np.arange(steps).repeat(25), rng.integers(0, 6400, steps * 25)] = 1
        hs = np.maximum(xs @ model["W1"].T, 0)
        ys = (rng.random(steps) < 0.5).astype(np.float64)
        rewards = np.zeros(steps)
        rewards[::100] = -1
        episodes.append(PlainEpisode(xs, hs, ys, ys - 0.5, rewards))
    one_episode_as_floats = steps * 6400 * 8
    tracemalloc.start()
    batch_gradient_plain(model, episodes, Hyperparameters(), 0.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert one_episode_as_floats < peak < 1.5 * one_episode_as_floats + 4 * model["W1"].nbytes, peak

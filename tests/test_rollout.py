import numpy as np

from policy import forward_sparse, init_model
from preprocess import difference_values, preprocess, sparse_difference
from rollout import DOWN, UP, make_env, play_episode, task_rng


def play_from_rgb_frames(env, weights, rng):
    """The episode loop as the 2016 script reads the game: from the RGB frame each step returns."""
    obs, _ = env.reset()
    previous, ups, rewards, idxs, ons = None, [], [], [], []
    while True:
        current = preprocess(obs)
        idx, on = sparse_difference(current, previous)
        previous = current
        up = rng.random() < forward_sparse(weights["W1T"], weights["W2"], idx, difference_values(on))
        obs, reward, terminated, truncated, _ = env.step(UP if up else DOWN)
        ups.append(up); rewards.append(reward); idxs.append(idx); ons.append(on)
        if terminated or truncated:
            return ups, rewards, idxs, ons


def test_play_episode_plays_the_same_game_as_reading_rgb_frames():
    model = init_model(200, np.random.default_rng(3))
    weights = {"W1T": np.ascontiguousarray(model["W1"].T), "W2": model["W2"]}
    fast_env, rgb_env = make_env(), make_env(obs_type="rgb")
    fast_env.reset(seed=11); rgb_env.reset(seed=11)
    for game in range(2):
        episode = play_episode(fast_env, weights, task_rng(0, game))
        ups, rewards, idxs, ons = play_from_rgb_frames(rgb_env, weights, task_rng(0, game))
        np.testing.assert_array_equal(episode.up, ups)
        np.testing.assert_array_equal(episode.rewards, rewards)
        np.testing.assert_array_equal(episode.idx, np.concatenate(idxs))
        np.testing.assert_array_equal(episode.vals, np.where(np.concatenate(ons), 1, -1))
        assert episode.steps > 500 and episode.rewards.any()

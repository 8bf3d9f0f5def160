"""The algorithm, step by step: each fast form computes what its plain form computes, and the
hand-written gradients agree with finite differences."""
import numpy as np
import pytest

import pong_pg_fast
from conftest import random_weights
from pong_pg import (
    DOWN,
    EPSILON,
    UP,
    Hyperparameters,
    PlainEpisode,
    batch_gradient_plain,
    discount_rewards,
    init_model,
    learning_rate,
    play_episode_plain,
    policy_backward,
    policy_forward,
    rmsprop_step,
    sigmoid,
    standardize,
)
from pong_pg_fast import (
    BatchGradient,
    SparseEpisode,
    accumulate_sparse_gradients,
    pixel_major,
    play_episode,
    play_weights,
    policy_forward_sparse,
    update,
)
from preprocess import D
from workers import game_step, make_env, task_rng


def sparse_backward(W1, W2, indptr, idx, vals, up, coefs, entropy=False):
    """accumulate_sparse_gradients into new arrays: dW1 (K, H, 6400) and dW2 (K, H), float64."""
    H, K = W1.shape[0], coefs.shape[1] + entropy
    dW1T, dW2 = np.zeros((D, K * H)), np.zeros((K, H))
    accumulate_sparse_gradients(np.ascontiguousarray(W1.T), W2, indptr, idx, vals, up, coefs, dW1T, dW2,
                                entropy=entropy)
    return dW1T.reshape(D, K, H).transpose(1, 2, 0), dW2


def hyper(**given):
    """Hyperparameters for a test: the defaults, but no entropy bonus unless given."""
    return Hyperparameters(**{"entropy": 0.0, **given})


def model64(hidden=200, seed=0):
    return {k: v.astype(np.float64) for k, v in init_model(hidden, np.random.default_rng(seed)).items()}


def plain_episode(model, X, up, rewards):
    """The PlainEpisode play_episode_plain records for frames X and actions up, played with model."""
    hs = np.maximum(X @ model["W1"].T, 0)
    ys = up.astype(np.float64)
    return PlainEpisode(X.astype(np.int8), hs, ys, ys - sigmoid(hs @ model["W2"]), rewards)


def log_prob_objective(model, X, up, advantages, entropy=0.0):
    """J(W) = sum_t A_t log pi(a_t | x_t) + entropy * sum_t H(p_t), computed directly from the forward pass."""
    p = sigmoid(np.maximum(X @ model["W1"].T, 0) @ model["W2"])
    H = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return np.sum(advantages * np.where(up == 1, np.log(p), np.log(1 - p))) + entropy * H.sum()


@pytest.fixture(scope="module")
def episode(real_steps):
    frames, X = real_steps
    T = len(X)
    rng = np.random.default_rng(1)
    up = (rng.random(T) < 0.5).astype(np.uint8)
    rewards = np.zeros(T)
    rewards[[90, 180, 300]] = [-1, 1, -1]
    return frames, X, up, rewards


def test_discount_rewards_by_hand():
    np.testing.assert_allclose(discount_rewards(np.array([0, 0, 1.0]), 0.5), [0.25, 0.5, 1])
    # the running sum restarts at every point: the -1 is not discounted into the steps before the +1
    np.testing.assert_allclose(discount_rewards(np.array([0, 1.0, 0, -1.0]), 0.9), [0.9, 1, -0.9, -1])
    np.testing.assert_allclose(discount_rewards(np.array([0, 0.0]), 0.99), [0, 0])   # no point yet: 0
    np.testing.assert_allclose(discount_rewards(np.array([1.0, 1.0]), 1.0), [1, 1])


def test_standardize():
    z = standardize(np.array([1.0, 2.0, 3.0, 6.0]))
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_allclose(z, (np.array([1, 2, 3, 6]) - 3) / np.std([1, 2, 3, 6]))


def test_dense_backward_matches_finite_differences(episode):
    frames, X, up, rewards = episode
    model = model64()
    advantages = standardize(discount_rewards(rewards, 0.99))
    hs = np.maximum(X @ model["W1"].T, 0)
    p = sigmoid(hs @ model["W2"])
    grad = policy_backward(model, hs, X, advantages * (up - p))
    check_against_finite_differences(model, grad, X, up, advantages)


def test_sparse_backward_matches_finite_differences(episode):
    frames, X, up, rewards = episode
    model = model64()
    advantages = standardize(discount_rewards(rewards, 0.99))
    dW1, dW2 = sparse_backward(model["W1"], model["W2"], *frames, up, advantages[:, None])
    check_against_finite_differences(model, {"W1": dW1[0], "W2": dW2[0]}, X, up, advantages)


def test_the_entropy_bonus_matches_finite_differences_plain_and_sparse(episode):
    """J + beta * sum_t H_t: the plain batch gradient (entropy_gradient at the logit) and the sparse
    backward pass's extra weighting both agree with finite differences, on a network with opinions
    (W2 scaled up: P(UP) far from 1/2, where the bonus pulls)."""
    frames, X, up, rewards = episode
    model = model64()
    model["W2"] *= 20
    advantages = standardize(discount_rewards(rewards, 0.99))
    plain = batch_gradient_plain(model, [plain_episode(model, X, up, rewards)], hyper(), 0.5)
    check_against_finite_differences(model, plain, X, up, advantages, entropy=0.5)
    dW1, dW2 = sparse_backward(model["W1"], model["W2"], *frames, up, advantages[:, None], entropy=True)
    sparse = {"W1": dW1[0] + 0.5 * dW1[1], "W2": dW2[0] + 0.5 * dW2[1]}
    check_against_finite_differences(model, sparse, X, up, advantages, entropy=0.5)
    assert np.abs(dW2[1]).max() > 0.05 * np.abs(dW2[0]).max()        # the bonus is not negligible here


def check_against_finite_differences(model, grad, X, up, advantages, h=1e-5, entropy=0.0):
    rng = np.random.default_rng(2)
    active_pixels = np.flatnonzero(np.abs(X).sum(0))
    coords = [("W1", (rng.integers(200), rng.choice(active_pixels))) for _ in range(25)]
    coords += [("W2", (rng.integers(200),)) for _ in range(10)]
    checked = 0
    for name, where in coords:
        old = model[name][where]
        model[name][where] = old + h
        plus = log_prob_objective(model, X, up, advantages, entropy)
        model[name][where] = old - h
        minus = log_prob_objective(model, X, up, advantages, entropy)
        model[name][where] = old
        numeric = (plus - minus) / (2 * h)
        analytic = grad[name][where]
        # relative error, with an absolute floor for the rounding of J (a sum over hundreds of steps)
        assert abs(analytic - numeric) <= 1e-5 * max(abs(analytic), abs(numeric)) + 1e-8, \
            (name, where, analytic, numeric)
        checked += abs(numeric) > 1e-5    # count the checks where the gradient is far from 0
    assert checked >= 15
    # coordinates of pixels that never change have exactly zero gradient
    quiet = np.setdiff1d(np.arange(D), active_pixels)
    assert not grad["W1"][:, quiet].any()


def test_sparse_forward_equals_dense_forward(real_steps):
    (indptr, idx, vals), X = real_steps
    model = init_model(200, np.random.default_rng(3))
    weights = play_weights(model)
    for t in range(len(X)):
        sl = slice(indptr[t], indptr[t + 1])
        p_sparse, h_sparse = policy_forward_sparse(weights, idx[sl].astype(np.intp), vals[sl].astype(np.float32))
        p_dense, h_dense = policy_forward({k: v.astype(np.float64) for k, v in model.items()}, X[t])
        assert abs(p_sparse - p_dense) < 1e-6
        np.testing.assert_allclose(h_sparse, h_dense, rtol=0, atol=1e-6)


def test_sparse_backward_equals_dense_backward_float32(episode):
    """The trainer's float32 sparse path against the float64 dense reference, several weightings at once."""
    frames, X, up, rewards = episode
    model = init_model(200, np.random.default_rng(4))
    m64 = {k: v.astype(np.float64) for k, v in model.items()}
    R = discount_rewards(rewards, 0.99)
    coefs = np.stack([R, np.ones_like(R)], axis=1)
    dW1, dW2 = sparse_backward(model["W1"], model["W2"], *frames, up, coefs)
    hs = np.maximum(X @ m64["W1"].T, 0)
    p = sigmoid(hs @ m64["W2"])
    for k in range(2):
        ref = policy_backward(m64, hs, X, coefs[:, k] * (up - p))
        np.testing.assert_allclose(dW1[k], ref["W1"], atol=1e-5 * np.abs(ref["W1"]).max())
        np.testing.assert_allclose(dW2[k], ref["W2"], atol=1e-5 * np.abs(ref["W2"]).max())


@pytest.mark.parametrize("entropy", [0.0, 0.05])
def test_batch_gradient_equals_the_plain_batch_gradient(episode, entropy):
    """BatchGradient (sums per episode, standardized at the end) = batch_gradient_plain (the returns of
    all the batch's steps standardized together, then the dense backward pass episode by episode)."""
    frames, X, up, rewards = episode
    (indptr, idx, vals) = frames
    model = init_model(200, np.random.default_rng(5))
    m64 = {k: v.astype(np.float64) for k, v in model.items()}
    weights = play_weights(model)
    cuts = [0, 120, 250, len(up)]                     # three "episodes" of different lengths
    batch, plain = BatchGradient(200, entropy_sums=entropy > 0), []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        r = rewards[a:b].copy()
        r[-1] = r[-1] or 1.0                          # each episode ends on a point
        batch.add_episode(weights, SparseEpisode(indptr[a:b + 1] - indptr[a], idx[indptr[a]:indptr[b]],
                                           vals[indptr[a]:indptr[b]], up[a:b], r), 0.99)
        plain.append(plain_episode(m64, X[a:b], up[a:b], r))
    ref = batch_gradient_plain(m64, plain, hyper(), entropy)
    grad = batch.gradient(entropy=entropy)
    assert batch.episodes == 3 and batch.steps == len(up)
    np.testing.assert_allclose(grad["W1"], ref["W1"], atol=1e-5 * np.abs(ref["W1"]).max())
    np.testing.assert_allclose(grad["W2"], ref["W2"], atol=1e-5 * np.abs(ref["W2"]).max())


def test_rmsprop_step_matches_formula():
    rng = np.random.default_rng(6)
    model = {"W1": rng.standard_normal((3, 4)).astype(np.float32), "W2": rng.standard_normal(3).astype(np.float32)}
    cache = {k: np.abs(rng.standard_normal(v.shape)).astype(np.float32) for k, v in model.items()}
    grad = {k: rng.standard_normal(v.shape) for k, v in model.items()}
    lr, decay, eps = 1e-2, 0.9, EPSILON
    expected_cache = {k: decay * cache[k] + (1 - decay) * grad[k] ** 2 for k in model}
    expected = {k: model[k] + lr * grad[k] / (np.sqrt(expected_cache[k]) + eps) for k in model}
    rmsprop_step(model, cache, grad, lr, decay)
    for k in model:
        np.testing.assert_allclose(cache[k], expected_cache[k], rtol=1e-5)
        np.testing.assert_allclose(model[k], expected[k], rtol=1e-5)
        assert model[k].dtype == np.float32


@pytest.mark.parametrize("per_episode, entropy", [(False, 0.0), (True, 0.0), (False, 0.05)])
@pytest.mark.parametrize("layout", [np.copy, pixel_major])
def test_update_in_blocks_is_one_rmsprop_step_on_the_whole_gradient(episode, per_episode, entropy, layout):
    """update() steps W1 a block of pixels at a time: the same numbers, bit for bit, as rmsprop_step
    on the batch's whole gradient (with the entropy bonus's weight it is handed); with W1 and its cache
    stored as the post has them or pixel by pixel as the learner keeps them."""
    frames, X, up, rewards = episode
    weights, batch = random_weights(4), BatchGradient(200, per_episode, entropy_sums=True)
    batch.add_episode(weights, SparseEpisode(*frames, up, rewards), 0.99)
    model = init_model(200, np.random.default_rng(8))
    cache = {k: np.random.default_rng(9).random(v.shape).astype(v.dtype) for k, v in model.items()}
    blocked = ({k: layout(v) for k, v in model.items()}, {k: layout(v) for k, v in cache.items()})
    assert blocked[0]["W1"].flags.f_contiguous == (layout is pixel_major)
    rmsprop_step(model, cache, batch.gradient(entropy=entropy), 1e-3, 0.9)
    update(*blocked, batch, 1e-3, 0.9, entropy)
    for k in model:
        np.testing.assert_array_equal(blocked[0][k], model[k], err_msg=k)
        np.testing.assert_array_equal(blocked[1][k], cache[k], err_msg=k)
    assert not np.array_equal(model["W1"], init_model(200, np.random.default_rng(8))["W1"])


def test_init_model_is_xavier_scaled_float32():
    model = init_model(200, np.random.default_rng(0))
    assert model["W1"].shape == (200, 6400) and model["W2"].shape == (200,)
    assert model["W1"].dtype == model["W2"].dtype == np.float32
    assert abs(model["W1"].std() - 1 / 80) < 1e-3        # Xavier: 1/sqrt(6400)
    assert abs(model["W2"].std() - 1 / np.sqrt(200)) < 0.01


def test_saturated_logits_neither_overflow_nor_warn():
    import warnings
    W1T = np.full((D, 4), 100.0, np.float32)
    idx, vals = np.arange(10), np.ones(10, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert policy_forward_sparse({"W1T": W1T, "W2": np.full(4, 100.0, np.float32)}, idx, vals)[0] == 1.0
        assert policy_forward_sparse({"W1T": W1T, "W2": np.full(4, -100.0, np.float32)}, idx, vals)[0] < 1e-20
        np.testing.assert_allclose(sigmoid(np.array([-1e4, 0.0, 1e4])), [0, 0.5, 1], atol=1e-20)


def test_play_episode_plays_the_same_game_as_play_episode_plain(monkeypatch):
    """The palette-screen episode loop with float32 weights and the 2016 RGB-frame loop with the same
    weights in float64: the same actions, rewards and difference frames, step for step, over two whole
    games with the same seeds (the random numbers drawn 97 at a time here, so that a game crosses many
    draws); the plain loop's h and y - p are the network's at each of its frames."""
    monkeypatch.setattr(pong_pg_fast, "DICE_AT_ONCE", 97)
    model = init_model(200, np.random.default_rng(3))
    m64 = {k: v.astype(np.float64) for k, v in model.items()}
    fast_env, rgb_env = make_env(), make_env(obs_type="rgb")
    fast_env.reset(seed=11)
    rgb_env.reset(seed=11)
    for game in range(2):
        fast = play_episode(fast_env, play_weights(model), task_rng(0, game))
        plain = play_episode_plain(rgb_env, m64, task_rng(0, game))
        np.testing.assert_array_equal(fast.up, plain.ys)
        np.testing.assert_array_equal(fast.rewards, plain.rewards)
        dense = np.zeros((fast.steps, D), np.int8)
        dense[np.repeat(np.arange(fast.steps), np.diff(fast.indptr)), fast.idx] = fast.vals
        np.testing.assert_array_equal(dense, plain.xs)
        expected = plain_episode(m64, plain.xs.astype(np.float64), fast.up, plain.rewards)
        np.testing.assert_allclose(plain.hs, expected.hs, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(plain.dlogps, expected.dlogps, rtol=0, atol=1e-12)
        assert fast.steps > 500 and (fast.rewards != 0).sum() >= 21


@pytest.mark.parametrize("max_frames", [None, 2000])
def test_game_step_plays_the_game_env_step_plays(max_frames):
    """The same seed and actions through env.step and through game_step: the same screen, reward, end
    of game and truncation at every step, over a whole game to 21 (or one cut short by the frame limit,
    a truncation), sticky actions included."""
    kwargs = {} if max_frames is None else {"max_num_frames_per_episode": max_frames}
    by_env, direct = make_env(**kwargs), make_env(**kwargs)
    by_env.reset(seed=5)
    direct.reset(seed=5)
    step, actions = game_step(direct), np.random.default_rng(1).choice([UP, DOWN, 0, 1], size=20_000)
    screens = [np.empty((210, 160), np.uint8) for _ in range(2)]
    for t, action in enumerate(actions):
        _, reward, terminated, truncated, _ = by_env.step(action)
        assert step(action) == (reward, terminated, truncated), f"step {t}"
        by_env.unwrapped.ale.getScreen(screens[0])
        direct.unwrapped.ale.getScreen(screens[1])
        np.testing.assert_array_equal(screens[0], screens[1], err_msg=f"step {t}")
        if terminated or truncated:
            break
    assert truncated if max_frames else terminated and t > 500


def test_a_batch_after_reset_holds_only_its_own_episodes(episode):
    """reset() zeroes only the rows of the pixels the last batch touched: a batch refilled after it
    has the same gradient as a new one, and its pixels are the new episode's."""
    frames, X, up, rewards = episode
    (indptr, idx, vals) = frames
    weights = random_weights(10)
    first = SparseEpisode(indptr[:201], idx[:indptr[200]], vals[:indptr[200]], up[:200], rewards[:200])
    second = SparseEpisode(indptr[200:] - indptr[200], idx[indptr[200]:], vals[indptr[200]:], up[200:], rewards[200:])
    reused, new = BatchGradient(200), BatchGradient(200)
    reused.add_episode(weights, first, 0.99)
    reused.reset()
    for batch in (reused, new):
        batch.add_episode(weights, second, 0.99)
    np.testing.assert_array_equal(reused.pixels(), np.unique(second.idx))
    for k in ("W1", "W2"):
        np.testing.assert_array_equal(reused.gradient()[k], new.gradient()[k])
    assert set(np.unique(first.idx)) - set(np.unique(second.idx))     # the first touched other pixels


def test_warm_up_after_an_empty_cache_steps_lr_from_the_first_update():
    """learning_rate(): from an empty RMSProp cache, update t's cache holds (1 - decay^t) g^2 for a steady
    gradient g, so the plain lr steps lr / sqrt(1 - decay^t) (10 lr at first, with decay 0.99); the
    warm-up's lr * sqrt(1 - decay^t) steps lr, as a full cache would, from update 1 on; with the late
    settings in force (an agent file whose first game passes 0), their lr and decay."""
    lr, decay, g = 1e-3, 0.99, {"W2": np.array([0.5, -2.0, 0.2])}
    for settings, late in ((hyper(lr=lr, decay_rate=decay), False),
                           (hyper(lr=3e-3, decay_rate=0.9, late_lr=lr, late_decay_rate=decay), True)):
        for warm in (True, False):
            model, cache = {"W2": np.zeros(3, np.float32)}, {"W2": np.zeros(3, np.float32)}
            for t in range(1, 301):
                before = model["W2"].copy()
                rmsprop_step(model, cache, g, learning_rate(settings, t - 1, 0 if warm else None, late), decay)
                expected = lr * np.sign(g["W2"]) / (1 if warm else np.sqrt(1 - decay ** t))
                np.testing.assert_allclose(model["W2"] - before, expected, rtol=2e-3)
    # a warm-up begun later counts its updates from there
    assert learning_rate(settings, 300, 290, late) == pytest.approx(lr * np.sqrt(1 - decay ** 11))


def test_update_changes_w1_only_in_the_columns_of_the_batchs_touched_pixels(episode):
    """The workers are sent only the rows of W1T whose pixels the batch touched (WeightsSnapshot.patch): every
    other column of W1 must keep its weights exactly."""
    frames, X, up, rewards = episode
    batch = BatchGradient(200)
    batch.add_episode(random_weights(4), SparseEpisode(*frames, up, rewards), 0.99)
    model = {k: pixel_major(v) for k, v in init_model(200, np.random.default_rng(8)).items()}
    cache = {k: np.full_like(v, 1e-3) for k, v in model.items()}
    before = model["W1"].copy()
    update(model, cache, batch, 1e-3, 0.9)
    moved = (model["W1"] != before).any(axis=0)
    assert moved.any() and not (moved & ~batch.touched).any()
    np.testing.assert_array_equal(model["W1"][:, ~batch.touched], before[:, ~batch.touched])


def test_a_non_finite_gradient_stops_the_update(episode):
    frames, X, up, rewards = episode
    batch, model = BatchGradient(200), init_model(200, np.random.default_rng(11))
    batch.add_episode(random_weights(11), SparseEpisode(*frames, up, rewards), 0.99)
    batch.sums_W1T[batch.pixels()[-1], 3] = np.nan
    with pytest.raises(FloatingPointError):
        update(model, {k: np.zeros_like(v) for k, v in model.items()}, batch, 1e-3, 0.9)


def test_an_unfinished_batch_saved_and_restored_gives_the_same_gradient(episode):
    """A checkpoint keeps the batch's sums in float32, for the pixels it touched: the gradient after a
    resume equals the uninterrupted one to float32 rounding."""
    frames, X, up, rewards = episode
    (indptr, idx, vals) = frames
    weights = random_weights(6)
    halves = [SparseEpisode(indptr[a:b + 1] - indptr[a], idx[indptr[a]:indptr[b]], vals[indptr[a]:indptr[b]], up[a:b],
                      rewards[a:b]) for a, b in ((0, 200), (200, len(up)))]
    whole, resumed = BatchGradient(200), BatchGradient(200)
    for episode_ in halves:
        whole.add_episode(weights, episode_, 0.99)
    resumed.add_episode(weights, halves[0], 0.99)
    resumed = BatchGradient.resumed(resumed.state(), hyper())
    resumed.add_episode(weights, halves[1], 0.99)
    expected, got = whole.gradient(), resumed.gradient()
    assert (resumed.steps, resumed.episodes) == (whole.steps, whole.episodes)
    for k in ("W1", "W2"):
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6 * np.abs(expected[k]).max())


def test_per_episode_standardization_is_the_2016_formula(episode):
    """--preset 2016: each episode's returns standardized on their own, as the 2016 script does
    (discounted_epr -= np.mean(discounted_epr); discounted_epr /= np.std(discounted_epr)), summed over
    the batch's episodes."""
    frames, X, up, rewards = episode
    (indptr, idx, vals) = frames
    model = init_model(200, np.random.default_rng(7))
    m64 = {k: v.astype(np.float64) for k, v in model.items()}
    weights = play_weights(model)
    batch, plain, expected = BatchGradient(200, per_episode=True), [], {"W1": 0, "W2": 0}
    for a, b in zip([0, 150, 260], [150, 260, len(up)], strict=True):
        r = rewards[a:b].copy()
        r[-1] = r[-1] or 1.0
        batch.add_episode(weights, SparseEpisode(indptr[a:b + 1] - indptr[a], idx[indptr[a]:indptr[b]],
                                           vals[indptr[a]:indptr[b]], up[a:b], r), 0.99)
        plain.append(plain_episode(m64, X[a:b], up[a:b], r))
        discounted_epr = discount_rewards(r, 0.99)
        discounted_epr -= np.mean(discounted_epr)
        discounted_epr /= np.std(discounted_epr)
        hs = np.maximum(X[a:b] @ m64["W1"].T, 0)
        grad = policy_backward(m64, hs, X[a:b], discounted_epr * (up[a:b] - sigmoid(hs @ m64["W2"])))
        expected = {k: expected[k] + grad[k] for k in grad}
    for got in (batch.gradient(), batch_gradient_plain(m64, plain, hyper(standardize="episode"), 0.0)):
        for k in ("W1", "W2"):
            np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-5 * np.abs(expected[k]).max())
    assert not np.allclose(batch_gradient_plain(m64, plain, hyper(), 0.0)["W2"], expected["W2"])   # the switch matters

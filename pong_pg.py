"""pong_pg: learn Atari Pong from pixels with policy gradients (REINFORCE), in numpy.

    python pong_pg.py              train on every core until stopped; Ctrl-C saves a checkpoint and exits
    python pong_pg.py --resume     continue the run in checkpoints/ (where there is none yet, start one)
    python pong_pg.py --plain      train with the 2016 loop as written: one process, float64, dense

A 2-layer network (6400 -> 200 ReLU -> sigmoid P(UP)) reads 80x80 difference frames, samples UP or
DOWN, and learns with REINFORCE: discounted returns, standardized over each batch of 10 episodes, a
hand-written backward pass, RMSProp. The file follows the 2016 "Pong from Pixels" script: the
algorithm first (each step in its plain form, then the faster form the trainer runs, computing the
same numbers), then the two training loops (train_plain, the 2016 loop; train, the same on every
core), and the book-keeping (command line, checkpoints, log) last.
"""
import os
import signal
import sys

from stopping import OutputThatNeverStops, Stop  # book-keeping, first: Ctrl-C during start-up stops as cleanly as later

if __name__ == "__main__":
    Stop.catch()
    OutputThatNeverStops.install()    # a full disk under `> train.log` must not end training

# One BLAS thread per process: the worker processes already keep every core busy, and BLAS threads
# spinning beside them slow everything down. Must be set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import errno
import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

import checkpoint
import watch
from checkpoint import CheckpointError
from preprocess import (
    COLORS,
    D,
    dense_difference,
    difference_values,
    learn_colors,
    preprocess,
    screen_difference,
    screen_pixels,
)
from workers import WorkerError, WorkerPool, env_seed, game_step, make_env, task_rng

# ---------------------------------------------------------------- hyperparameters (each is a flag)
HIDDEN = 200            # hidden units
BATCH_SIZE = 10         # episodes per parameter update
LEARNING_RATE = 3e-3    # RMSProp step size (the 2016 script: 1e-4)
GAMMA = 0.99            # reward discount
DECAY_RATE = 0.9        # RMSProp decay of the squared-gradient average (the 2016 script: 0.99)
EPSILON = 1e-5          # RMSProp: avoids division by zero
ENTROPY = 0.02          # weight of the entropy bonus: beta * sum_t H(P(UP | x_t)) joins the objective
SAVE_EVERY = 100        # episodes between checkpoints
PICTURES_EVERY = 300    # seconds between redrawing the pictures at a checkpoint (the learner waits meanwhile)
RUNNING_MEAN_DECAY = 0.99   # the running mean score: 0.99 * old + 0.01 * episode score

EXIT_LAST_CHECKPOINT_KEPT = 75   # the final save failed (sysexits' EX_TEMPFAIL: retry once the disk has room)

UP, DOWN = 2, 3         # Pong's minimal action set: RIGHT moves our paddle up, LEFT down


# ================================================================ ALGORITHM
#
# 1. Preprocessing lives in preprocess.py: preprocess(frame) is the 2016 recipe (crop, downsample,
#    erase the background: an 80x80 image of paddles and ball); the network reads the difference of
#    two consecutive images, x = cur_x - prev_x (dense_difference). The fast path keeps it sparse (a
#    few dozen of its 6,400 pixels are nonzero) and computes it from ALE's palette screens
#    (screen_difference), the same numbers.

# ---------------------------------------------------------------- 2. the policy network

def init_model(hidden, rng):
    """Xavier-style initialisation, float32. W1 is (hidden, 6400), W2 is (hidden,)."""
    return {"W1": (rng.standard_normal((hidden, D)) / np.sqrt(D)).astype(np.float32),
            "W2": (rng.standard_normal(hidden) / np.sqrt(hidden)).astype(np.float32)}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))    # clipped: no overflow; sigmoid(50) is 1 in float64


def entropy_gradient(z):
    """dH/dz of H = -p log p - (1-p) log(1-p), p = sigmoid(z) (the policy's entropy at logit z): -z p (1-p).
    Clipped as sigmoid is; it pulls P(UP) back towards 1/2."""
    z = np.clip(z, -50, 50)
    p = sigmoid(z)
    return -z * p * (1 - p)


def policy_forward(model, x):
    """x (6400,) -> (p = P(UP), h). The plain forward pass, as the 2016 script wrote it."""
    h = np.maximum(model["W1"] @ x, 0)                   # h = relu(W1 x)
    return sigmoid(model["W2"] @ h), h                   # p = sigmoid(W2 . h)


def policy_forward_sparse(weights, idx, vals):
    """The same (p, h) for a sparse difference frame (pixels idx with values vals), with weights =
    play_weights(model): W1 @ x reads only the columns of the nonzero pixels, which are contiguous
    rows of W1T = W1.T."""
    h = vals.dot(weights["W1T"].take(idx, axis=0))       # h = W1 x, touching only the nonzero pixels
    np.maximum(h, 0, out=h)                              # relu
    logit = min(max(float(h.dot(weights["W2"])), -50.0), 50.0)
    return 1.0 / (1.0 + math.exp(-logit)), h             # p = sigmoid(W2 . h), clipped alike


def play_weights(model):
    """The weights the fast path plays with, a copy the learner does not change: W1 transposed for
    policy_forward_sparse, and W2, in float32."""
    return {"W1T": np.array(model["W1"].T, order="C", dtype=np.float32), "W2": model["W2"].astype(np.float32)}


# ---------------------------------------------------------------- 3. playing an episode

@dataclass
class PlainEpisode:
    """One game as the 2016 script records it, a row per step: the difference frame x the network
    read, its hidden activations h, the "fake label" y (1 for UP, 0 for DOWN), y - p (the gradient of
    log pi(action) at the logit) and the reward. x is kept as int8 (its values are -1, 0 and 1): 6,400
    bytes a step where float64 takes 51 KB, so that ten games of 5,000 steps fit in 320 MB."""
    xs: np.ndarray            # (T, 6400) int8
    hs: np.ndarray            # (T, H) float64
    ys: np.ndarray            # (T,) 1.0 for UP, 0.0 for DOWN
    dlogps: np.ndarray        # (T,) y - p
    rewards: np.ndarray       # (T,) +1 / -1 when a point ends, else 0

    @property
    def steps(self):
        return len(self.ys)

    @property
    def score(self):
        return int(self.rewards.sum())


def play_episode_plain(env, model, rng):
    """One episode as the 2016 script plays it, from the RGB frames env.step returns (env made with
    make_env(obs_type="rgb")), with the float64 model. play_episode below plays the same game, faster."""
    observation, _ = env.reset()
    previous, xs, hs, ys, dlogps, rewards = None, [], [], [], [], []
    while True:
        current = preprocess(observation)                   # 80x80: paddles and ball
        x = dense_difference(current, previous)             # x = cur_x - prev_x: what moved
        previous = current
        p, h = policy_forward(model, x)                     # p = P(UP)
        y = 1.0 if rng.random() < p else 0.0                # roll the dice: UP with probability p
        observation, reward, terminated, truncated, _ = env.step(UP if y else DOWN)
        xs.append(x.astype(np.int8))                        # -- record x, h, y - p, the reward
        hs.append(h)
        ys.append(y)
        dlogps.append(y - p)                                # d log pi(action) / d logit
        rewards.append(reward)
        if terminated or truncated:
            return PlainEpisode(np.array(xs), np.array(hs), np.array(ys), np.array(dlogps), np.array(rewards))


@dataclass
class Episode:
    """One game as the fast path keeps it: each step's sparse difference frame (CSR form: step t's
    pixels are idx[indptr[t]:indptr[t+1]], values vals[...]), whether the action was UP, and its
    reward. About 100 bytes a step. h and p are computed again when the gradient is (episode_sums)."""
    indptr: np.ndarray        # (T+1,) int32
    idx: np.ndarray           # (nnz,) int16 flat pixel indices
    vals: np.ndarray          # (nnz,) int8, +1 (a pixel turned on) or -1 (turned off)
    up: np.ndarray            # (T,) uint8: 1 if the action was UP
    rewards: np.ndarray       # (T,) int8: +1 / -1 when a point ends, else 0

    @property
    def steps(self):
        return len(self.up)

    @property
    def score(self):
        return int(self.rewards.sum())

    @property
    def frames(self):
        return self.indptr, self.idx, self.vals


def compact_episode(idxs, turned_on, ups, rewards):
    """Per-step lists of (changed pixels, turned on?), actions and rewards -> an Episode."""
    counts = [len(i) for i in idxs]
    return Episode(indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
                   idx=np.concatenate(idxs).astype(np.int16),
                   vals=np.concatenate(turned_on).view(np.int8) * np.int8(2) - np.int8(1),   # +1 / -1
                   up=np.array(ups, np.uint8), rewards=np.array(rewards, np.int8))


DICE_AT_ONCE = 1024    # play_episode draws its random numbers this many at a time


def play_episode(env, weights, rng, greedy=False, on_step=None, max_steps=None):
    """Play one episode with weights = play_weights(model): the same game as play_episode_plain, with
    the same random numbers, and the same actions but where p and the die differ by less than float32's
    rounding.

    Faster: the game is stepped straight on the emulator by env.step's rules (game_step: no
    observation is built), and the difference frame comes from ALE's palette-index screen, of which
    only the pixels that changed are looked at; the random numbers are drawn a thousand at a time.
    on_step(rgb_frame, idx, turned_on, up, rewards_so_far) is called at every step, between choosing
    the action and taking it, with the screen the difference frame (idx, turned_on) came from (for
    watching and recording); max_steps cuts the game short; greedy takes UP when P(UP) > 0.5."""
    env.reset()
    ale, step = env.unwrapped.ale, game_step(env)
    screen = np.empty((210, 160), np.uint8)
    pixels, previous = np.empty(D, np.uint8), np.empty(D, np.uint8)
    ale.getScreen(screen)                                            # palette indices, into our buffer
    screen_pixels(screen, previous)                                  # the first difference is zero
    learn_colors(COLORS, previous, screen, ale.getScreenRGB)
    idxs, turned_on, ups, rewards = [], [], [], []
    while True:
        if len(ups) % DICE_AT_ONCE == 0:
            dice = rng.random(DICE_AT_ONCE)      # the next rolls: the same numbers as rng.random() one by one
        ale.getScreen(screen)
        screen_pixels(screen, pixels)
        idx, on = screen_difference(pixels, previous, COLORS, screen, ale.getScreenRGB)
        pixels, previous = previous, pixels
        p_up, _ = policy_forward_sparse(weights, idx, difference_values(on))
        up = p_up > 0.5 if greedy else dice[len(ups) % DICE_AT_ONCE] < p_up   # roll the dice
        if on_step is not None:
            on_step(ale.getScreenRGB(), idx, on, up, rewards)
        reward, terminated, truncated = step(UP if up else DOWN)    # env.step without the observation
        idxs.append(idx)
        turned_on.append(on)
        ups.append(up)
        rewards.append(reward)
        if terminated or truncated or len(ups) == max_steps:
            return compact_episode(idxs, turned_on, ups, rewards)


# ---------------------------------------------------------------- 4. discounted returns

def discount_rewards(rewards, gamma):
    """R_t = r_t + gamma * R_{t+1}, with the running sum reset at every point scored (r != 0)."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        if rewards[t] != 0:
            running = 0.0           # a point ended here: earlier actions are not credited for later points
        running = running * gamma + rewards[t]
        returns[t] = running
    return returns


def standardize(returns):
    """A_t = (R_t - mean) / std: zero mean, unit standard deviation over all steps of the batch."""
    return (returns - returns.mean()) / max(returns.std(), 1e-8)


# ---------------------------------------------------------------- 5. the backward pass
#
# REINFORCE ascends  J = sum_t A_t log pi(a_t | x_t).  With the "fake label" y_t = 1 for UP, 0 for
# DOWN, d log pi / d logit = y_t - p_t, so the gradient at the logit is dlogit_t = A_t (y_t - p_t).
# With an entropy bonus (--entropy beta), J gains beta * sum_t H_t, and dlogit_t beta * entropy_gradient(z_t).

def policy_backward(model, hs, xs, dlogits):
    """The plain backward pass, as the 2016 script wrote it. hs (T,H), xs (T,6400), dlogits (T,)."""
    dW2 = hs.T @ dlogits                          # dJ/dW2 = sum_t dlogit_t h_t
    dh = np.outer(dlogits, model["W2"])           # back through W2
    dh[hs <= 0] = 0                               # back through the relu
    dW1 = dh.T @ xs                               # dJ/dW1 = sum_t dh_t x_t^T
    return {"W1": dW1, "W2": dW2}


CHUNK_STEPS = 128    # steps per slice in the sparse backward pass (bounds its memory)


def accumulate_sparse_gradients(W1T, W2, indptr, idx, vals, up, coefs, dW1T, dW2, row=None, entropy=False):
    """The same backward pass on sparse frames, for K weightings at once: adds the gradient of
    sum_t coefs[t, k] log pi(a_t | x_t) for each column k of coefs (T, K) into dW1T (6400, K*H;
    column k*H + i is hidden unit i of weighting k) and dW2 (K, H); with entropy, the gradient of
    sum_t H_t (the policy's entropy) as one more weighting, the last. row: the row of dW1T that holds
    each pixel (default: row = pixel), so that dW1T may hold only the pixels the frames touch.

    Frames are in CSR form (Episode.frames). A slice of CHUNK_STEPS steps touches a few hundred
    distinct pixels: their columns of W1 make a small dense problem, a few small matrix products."""
    H, K, dtype = W1T.shape[1], coefs.shape[1] + entropy, W1T.dtype
    column = np.empty(D, np.intp)                                    # pixel -> its column in X
    for a in range(0, len(up), CHUNK_STEPS):
        b = min(a + CHUNK_STEPS, len(up))
        ea, eb = indptr[a], indptr[b]
        rows = np.repeat(np.arange(b - a), np.diff(indptr[a:b + 1]))  # the step of each nonzero pixel
        touched = np.zeros(D, bool)
        touched[idx[ea:eb]] = True
        pixels = touched.nonzero()[0]                                # the pixels this slice touches
        column[pixels] = np.arange(len(pixels))
        X = np.zeros((b - a, len(pixels)), dtype)                    # the slice's frames, those pixels only
        X[rows, column[idx[ea:eb]]] = vals[ea:eb]
        h = np.maximum(X @ W1T[pixels], 0)                           # h_t = relu(W1 x_t)
        z = h @ W2
        p = sigmoid(z)
        dlogit = ((up[a:b] - p)[:, None] * coefs[a:b]).astype(dtype)  # (steps, K): c_tk (y_t - p_t)
        if entropy:
            dlogit = np.concatenate([dlogit, entropy_gradient(z)[:, None].astype(dtype)], axis=1)   # dH_t/dz_t
        dW2 += dlogit.T @ h                                          # dW2_k += sum_t dlogit_tk h_t
        dh = (dlogit[:, :, None] * W2) * (h > 0)[:, None, :]         # back through W2 and the relu
        dW1T[pixels if row is None else row[pixels]] += X.T @ dh.reshape(b - a, K * H)   # dW1_k += sum_t dh_tk x_t^T


# ---------------------------------------------------------------- 6. the batch's gradient

def batch_advantages(episodes, gamma, per_episode=False):
    """Each episode's A_t: its discounted returns, standardized together with those of the whole
    batch (or within the episode, as the 2016 script does, with per_episode)."""
    returns = [discount_rewards(episode.rewards, gamma) for episode in episodes]
    if per_episode:
        return [standardize(R) for R in returns]                          # A_t within each episode
    together = standardize(np.concatenate(returns))                        # A_t over the whole batch
    return np.split(together, np.cumsum([len(R) for R in returns])[:-1])


def batch_gradient_plain(model, episodes, gamma, per_episode=False, entropy=0.0):
    """The gradient of sum_t A_t log pi(a_t | x_t) (+ entropy * sum_t H_t) over a batch of PlainEpisodes
    played with model: the advantages of the whole batch first, then the backward pass one episode at
    a time into a gradient buffer, as the 2016 script does (so that only one episode's x is ever held
    as floats)."""
    grad_buffer = {k: np.zeros_like(v) for k, v in model.items()}
    for episode, advantages in zip(episodes, batch_advantages(episodes, gamma, per_episode), strict=True):
        dlogits = advantages * episode.dlogps             # modulate the gradient with the advantage
        if entropy:
            dlogits = dlogits + entropy * entropy_gradient(episode.hs @ model["W2"])   # the entropy bonus
        grad = policy_backward(model, episode.hs, episode.xs.astype(model["W1"].dtype), dlogits)
        for k in model:
            grad_buffer[k] += grad[k]                     # accumulate over the batch
    return grad_buffer


@dataclass
class EpisodeSums:
    """One episode's share of the batch gradient, for the pixels it touched (the other pixels' W1
    sums are zero): sums_W1T[:, :H] = (sum_t R_t g_t).T and sums_W1T[:, H:] = (sum_t g_t).T in those
    rows, the same two sums for W2, sum R, sum R^2; and the episode's steps and score for the log."""
    pixels: np.ndarray        # (P,) int16: the pixels the episode's difference frames touched, sorted
    sums_W1T: np.ndarray      # (P, 2H) float32; (P, 3H) with the entropy bonus's sum_t dH_t last
    sums_W2: np.ndarray       # (2, H) float64; (3, H) with it
    sum_R: float
    sum_R2: float
    steps: int
    score: int


def episode_sums(weights, episode, gamma, per_episode=False, entropy=False):
    """EpisodeSums of an episode played with weights = play_weights(model): its returns R_t and the
    backward pass of sum_t R_t log pi(a_t|x_t) and of sum_t log pi(a_t|x_t), on the touched pixels
    (with entropy, that of sum_t H_t too). per_episode: R standardized within the episode (the 2016
    script's way), so its first sums are A g."""
    R = discount_rewards(episode.rewards, gamma)
    if per_episode:
        R = standardize(R)                                           # A_t over this episode alone
    touched = np.zeros(D, bool)
    touched[episode.idx] = True
    pixels = touched.nonzero()[0]
    row = np.zeros(D, np.intp)
    row[pixels] = np.arange(len(pixels))                             # each touched pixel's row in the sums
    H = len(weights["W2"])
    # the W1 sums in float32, the slices' products' type: adding them takes half the memory traffic
    sums = 2 + entropy
    sums_W1T, sums_W2 = np.zeros((len(pixels), sums * H), weights["W1T"].dtype), np.zeros((sums, H))
    accumulate_sparse_gradients(weights["W1T"], weights["W2"], *episode.frames, episode.up,
                                np.stack([R, np.ones_like(R)], axis=1), sums_W1T, sums_W2, row, entropy)
    return EpisodeSums(pixels.astype(np.int16), sums_W1T, sums_W2, float(R.sum()),
                       float((R * R).sum()), episode.steps, episode.score)


def play_for_batch(env, weights, rng, greedy=False, *, gamma, per_episode, entropy):
    """What a worker does while training: play an episode (with the weights it holds, which may be an
    update older than the newest), then compute its EpisodeSums with those same weights, so the
    learner only adds them up."""
    return episode_sums(weights, play_episode(env, weights, rng, greedy), gamma, per_episode, entropy)


class BatchGradient:
    """The batch's gradient, without keeping the batch: each episode's sums are added when they
    arrive, then dropped.

    With A_t = (R_t - mean) / std over the batch and g_t = grad log pi(a_t | x_t):
        sum_t A_t g_t = (sum_t R_t g_t - mean * sum_t g_t) / std
    so each episode adds its sum R g, sum g, sum R, sum R^2 and step count (EpisodeSums). The W1 sums
    are kept transposed, side by side: sums_W1T[:, :H] = (sum R g).T, sums_W1T[:, H:] = (sum g).T,
    in float32 like the weights and the episodes' sums they add up (half the memory traffic of float64).

    per_episode (the 2016 script's way, --preset 2016): each episode's returns are standardized on
    their own, so its R is already A and the first sums are the gradient. entropy: the weight of the
    entropy bonus, whose sum_t dH_t the episodes add as a third sum."""

    def __init__(self, hidden, per_episode=False, entropy=0.0):
        self.per_episode, self.entropy = per_episode, entropy
        self.sums_W1T = np.zeros((D, (2 + (entropy > 0)) * hidden), np.float32)
        self.sums_W2 = np.zeros((2 + (entropy > 0), hidden))
        self.touched = np.zeros(D, bool)                 # the pixels whose sums may be nonzero
        self.reset()

    def reset(self):
        """Empty the batch (reusing the arrays: a fresh 10 MB per update would fragment memory; only
        the touched pixels' rows need zeroing)."""
        self.sums_W1T[self.touched] = 0
        self.touched.fill(False)
        self.sums_W2.fill(0)
        self.sum_R = self.sum_R2 = 0.0
        self.steps = self.episodes = 0

    def add(self, sums):
        """Add one episode's EpisodeSums."""
        self.sums_W1T[sums.pixels] += sums.sums_W1T
        self.touched[sums.pixels] = True
        self.sums_W2 += sums.sums_W2
        self.sum_R += sums.sum_R
        self.sum_R2 += sums.sum_R2
        self.steps += sums.steps
        self.episodes += 1

    def add_episode(self, weights, episode, gamma):
        """Add an episode played with weights = play_weights() (its sums computed here)."""
        self.add(episode_sums(weights, episode, gamma, self.per_episode, self.entropy > 0))

    def pixels(self):
        """The pixels the batch's frames touched, sorted: W1's gradient is zero in the other columns."""
        return self.touched.nonzero()[0]

    def gradient(self, pixels=slice(None)):
        """{"W1", "W2"}: sum_t A_t g_t (+ entropy * sum_t dH_t) over the batch; "W1" only for the
        columns of these pixels."""
        H = self.sums_W2.shape[1]
        sums = self.sums_W1T[pixels]
        if self.per_episode:
            W1T, W2 = sums[:, :H].copy(), self.sums_W2[0].copy()
        else:
            mean = self.sum_R / self.steps
            std = max(np.sqrt(max(self.sum_R2 / self.steps - mean * mean, 0.0)), 1e-8)
            W1T = sums[:, :H] - mean * sums[:, H:2 * H]
            W1T /= std
            W2 = (self.sums_W2[0] - mean * self.sums_W2[1]) / std
        if self.entropy:
            W1T += self.entropy * sums[:, 2 * H:]                      # the entropy bonus
            W2 = W2 + self.entropy * self.sums_W2[2]
        return {"W1": W1T.T, "W2": W2}

    def state(self):
        """The unfinished batch as a checkpoint keeps it, compactly: the W1 sums of the pixels the
        batch touched (the rest are zero), in float32; the other sums as they are."""
        pixels = self.pixels()
        return {"pixels": pixels.astype(np.int16), "sums_W1T": self.sums_W1T[pixels],
                "sums_W2": self.sums_W2.copy(), "sum_R": self.sum_R, "sum_R2": self.sum_R2,
                "steps": self.steps, "episodes": self.episodes, "per_episode": self.per_episode,
                "entropy": self.entropy}

    @classmethod
    def from_state(cls, state, hidden, per_episode=False, entropy=0.0):
        """The batch of state(), or an empty one for None. ValueError if it does not fit hidden, or
        was summed for other settings."""
        batch = cls(hidden, per_episode, entropy)
        if state is None:
            return batch
        if settings_of(state) != (per_episode, entropy):
            raise ValueError("the unfinished batch was summed for other settings")
        pixels = state.get("pixels", slice(None))        # older checkpoints keep every pixel's sums
        sums = batch.sums_W2.shape[0]
        if np.shape(state["sums_W1T"])[1:] != (sums * hidden,) or np.shape(state["sums_W2"]) != (sums, hidden):
            raise ValueError("the unfinished batch's sums do not fit the network")
        batch.sums_W1T[pixels] = state["sums_W1T"]
        batch.touched[pixels] = True
        batch.sums_W2[:] = state["sums_W2"]
        batch.sum_R, batch.sum_R2 = float(state["sum_R"]), float(state["sum_R2"])
        batch.steps, batch.episodes = int(state["steps"]), int(state["episodes"])
        return batch


def settings_of(batch_state):
    """(per_episode, entropy): the settings an unfinished batch's sums were computed for."""
    return bool(batch_state.get("per_episode", False)), float(batch_state.get("entropy", 0.0))


# ---------------------------------------------------------------- 7. RMSProp

def rmsprop_step(model, cache, grad, lr, decay, eps, decayed=False):
    """Gradient ascent with RMSProp: cache = decay*cache + (1-decay)*g^2; W += lr*g/(sqrt(cache)+eps).
    decayed: the cache was multiplied by decay already (update() does that for all of W1 at once)."""
    for k in grad:
        g = grad[k].astype(model[k].dtype)
        if not decayed:
            cache[k] *= decay
        cache[k] += (1 - decay) * g * g
        step = np.sqrt(cache[k])
        step += eps
        np.divide(g, step, out=step)
        step *= lr
        model[k] += step


def learning_rate(state):
    """This update's learning rate: lr; but in the t-th update after an RMSProp cache started at zero
    under trained weights (--init-from an agent file), lr * sqrt(1 - decay^t). Such a cache holds only
    (1 - decay^t) of the mean g^2 it tracks, so its steps would be 1/sqrt(1 - decay^t) times too large,
    10x at first with decay 0.99, and jolt the trained agent; the factor cancels that (as Adam's bias
    correction does). A run from random weights takes the 2016 script's plain steps."""
    hyper, start = state["hyper"], state.get("warmup_from")
    if start is None:
        return hyper["lr"]
    t = state["updates"] - start + 1
    return hyper["lr"] * math.sqrt(1 - hyper["decay_rate"] ** t)


UPDATE_BLOCK = 512    # pixels (columns of W1) per block of update()


def pixel_major(W1):
    """The same (hidden, 6400) matrix W1, stored pixel by pixel: the transposed view of a contiguous
    (6400, hidden) array, in which each pixel's column of W1 is one contiguous row. That is how the
    learner keeps W1 and its RMSProp cache: update() reads and writes whole columns, the touched
    pixels', and the workers' W1T is a plain copy of it. W1 @ x and every formula read it as before."""
    return np.ascontiguousarray(W1.T).T


def update(model, cache, batch, hyper):
    """One parameter update from a full batch: rmsprop_step(model, cache, batch.gradient()), the same
    numbers bit for bit, done where it does something. In the column of a pixel that no frame of the
    batch touched, W1's gradient is zero, so the step there only decays the cache (cache*decay + 0, the
    weights + 0): all of the cache is decayed at once, then the touched pixels' columns take the rest
    of the step, a block of UPDATE_BLOCK at a time (a block's gradient, cache and weights stay in the
    CPU's cache through the formula's steps; with W1 pixel_major() a column is a contiguous row). A
    non-finite number stops training before it spreads (the run then ends without saving)."""
    lr, decay, pixels = hyper["lr"], hyper["decay_rate"], batch.pixels()
    grad_W2 = batch.gradient(pixels[:0])["W2"]
    if not finite(grad_W2):
        raise FloatingPointError("the gradient is not finite")
    rmsprop_step(model, cache, {"W2": grad_W2}, lr, decay, EPSILON)
    if not finite(model["W2"], cache["W2"]):
        raise FloatingPointError("the weights or the RMSProp cache are not finite")
    W1T, cache_W1T = model["W1"].T, cache["W1"].T              # views: row p is pixel p's column
    cache_W1T *= decay                                         # cache = decay * cache, in every column
    for a in range(0, len(pixels), UPDATE_BLOCK):
        rows = pixels[a:a + UPDATE_BLOCK]
        grad = {"W1T": batch.gradient(rows)["W1"].T}           # the block's columns of W1's gradient, as rows
        if not finite(grad["W1T"]):
            raise FloatingPointError("the gradient is not finite")
        W1, cache_W1 = {"W1T": W1T[rows]}, {"W1T": cache_W1T[rows]}   # (copies)
        rmsprop_step(W1, cache_W1, grad, lr, decay, EPSILON, decayed=True)   # + (1-decay) g^2, and the step
        if not finite(W1["W1T"], cache_W1["W1T"]):
            raise FloatingPointError("the weights or the RMSProp cache are not finite")
        W1T[rows], cache_W1T[rows] = W1["W1T"], cache_W1["W1T"]


def finite(*arrays):
    return all(np.all(np.isfinite(a)) for a in arrays)


# ---------------------------------------------------------------- 8. the training loop

def train_plain(args, state, paths, saves):
    """The 2016 script's loop (--plain), in one process, float64 and dense: play an episode, recording
    x, h, y - p and the rewards; every batch_size episodes, the batch's advantages, the backward pass one
    episode at a time into a gradient buffer, one RMSProp step. It computes what train() computes with
    one worker (tests/test_plain.py). Returns why it ended ("done" or a stop signal's name), the
    unfinished batch (a list of PlainEpisode) and the clock."""
    hyper, per_episode = state["hyper"], state["hyper"]["standardize"] == "episode"
    model = state["model"] = {k: v.astype(np.float64) for k, v in state["model"].items()}   # as in the post
    cache = state["cache"] = {k: v.astype(np.float64) for k, v in state["cache"].items()}
    episodes = unfinished_plain_batch(state, model)          # book-keeping: a batch begun before a resume
    env = make_env(obs_type="rgb")                            # env.step returns the RGB frame, as in the post
    env.reset(seed=env_seed(hyper["seed"], 0, state["next_task"]))   # as train()'s worker 0 seeds its game
    last_episode = state["episode"] + args.episodes if args.episodes else None
    clock, last_pictures = Clock(state["wall_seconds"]), None
    window_start, window_steps = time.time(), 0              # book-keeping for the per-update report
    print_start(state, "the plain way (one process, float64, dense)")
    with EpisodeLog(paths["log"], state["log_pending"]) as log:
        while not stopped() and (last_episode is None or state["episode"] < last_episode):
            # -- play: one episode with the current weights
            episode = play_episode_plain(env, model, task_rng(hyper["seed"], state["next_task"]))
            state["next_task"] += 1
            episodes.append(episode)
            count_episode(state, episode)

            # -- log
            window_steps += episode.steps
            log.append(state, episode, clock.seconds())
            if not args.quiet:
                print_episode(state, episode, clock)

            # -- update: every batch_size episodes, the batch's gradient and one RMSProp step
            if len(episodes) >= hyper["batch_size"]:
                grad = batch_gradient_plain(model, episodes, hyper["gamma"], per_episode, hyper["entropy"])
                if not finite(*grad.values()):
                    raise FloatingPointError("the gradient is not finite")
                rmsprop_step(model, cache, grad, learning_rate(state), hyper["decay_rate"], EPSILON)
                if not finite(*model.values(), *cache.values()):
                    raise FloatingPointError("the weights or the RMSProp cache are not finite")
                state["updates"] += 1
                print_update(state, sum(e.steps for e in episodes), len(episodes),
                             window_steps / max(time.time() - window_start, 1e-9), 0, clock)
                window_start, window_steps, episodes = time.time(), 0, []

                # -- save: every save_every episodes; pictures at most every PICTURES_EVERY s
                if state["episode"] - saves.episode >= args.save_every:
                    log.sync()
                    pictures = last_pictures is None or time.time() - last_pictures >= PICTURES_EVERY
                    if saves.save(state, episodes, clock, f"every {args.save_every} episodes", pictures):
                        last_pictures = time.time() if pictures else last_pictures
    env.close()
    return (signal.Signals(Stop.signum).name if Stop.signum else "done"), episodes, clock


PATCHES_KEPT = 16       # updates whose changed pixels are remembered, for patching older weights
PATCH_AT_MOST = 0.75    # of W1's rows: a patch that would change more sends all the weights


@dataclass
class WeightsSnapshot:
    """The weights the workers play with (play_weights()), numbered by the updates they have had, and
    which pixels' columns of W1 each recent update changed ({version: bool mask of pixels}): the other
    columns kept their weights, so a worker holding an older version needs only the changed rows of W1T."""
    version: int
    weights: dict
    changed: dict
    patches: dict = field(default_factory=dict)     # book-keeping: one patch per version held

    def patch(self, held):
        """What brings weights of version `held` to these: {"rows": pixels, "in_rows": {"W1T": those
        rows}, "whole": {"W2": W2}}, or None where that is not known or not much smaller than all."""
        if held not in self.patches:
            versions, rows = range(held + 1, self.version + 1), None
            if len(versions) and all(v in self.changed for v in versions):
                rows = np.logical_or.reduce([self.changed[v] for v in versions]).nonzero()[0]
            small = rows is not None and len(rows) <= PATCH_AT_MOST * len(self.weights["W1T"])
            self.patches[held] = {"rows": rows, "in_rows": {"W1T": self.weights["W1T"][rows]},
                                  "whole": {"W2": self.weights["W2"]}} if small else None
        return self.patches[held]


def train(args, state, paths, saves):
    """Worker processes play episodes with the newest weights and compute each episode's gradient sums
    (play_for_batch); the sums join the batch; every batch_size episodes, one RMSProp step. Returns
    why it ended: "done", a stop signal's name, or a WorkerError."""
    hyper, per_episode = state["hyper"], state["hyper"]["standardize"] == "episode"
    if state["model"]["W1"].dtype != np.float32:
        print("note: the checkpoint's weights are float64 (a --plain run): training goes on in float32")
    for part in ("model", "cache"):     # float32, W1 stored pixel by pixel: update() steps its columns
        state[part] = {k: (pixel_major(v) if k == "W1" else v).astype(np.float32) for k, v in state[part].items()}
    model, cache = state["model"], state["cache"]
    if state["batch"] and settings_of(state["batch"]) != (per_episode, hyper["entropy"]):
        print("note: the unfinished batch was summed with other settings (returns standardized per batch or "
              "per episode, the entropy bonus): it is dropped")
        state["batch"] = None
    batch = BatchGradient.from_state(state["batch"], hyper["hidden"], per_episode, hyper["entropy"])
    changed = {}                        # book-keeping: {version: the pixels its update changed}
    snapshot = WeightsSnapshot(state["updates"], play_weights(model), changed)
    for episode in episodes_of_plain_batch(state):       # a batch begun by --plain goes on here
        batch.add_episode(snapshot.weights, episode, hyper["gamma"])
    last_episode = state["episode"] + args.episodes if args.episodes else None
    clock = Clock(state["wall_seconds"])
    last_pictures = None
    window_start, window_steps, lag = time.time(), 0, 0    # book-keeping for the per-update report
    print_start(state, f"with {args.workers} worker(s)")
    play = functools.partial(play_for_batch, gamma=hyper["gamma"], per_episode=per_episode,
                             entropy=hyper["entropy"] > 0)
    with WorkerPool(args.workers, play, hyper["seed"], state["next_task"],
                    render_first=args.render) as pool, EpisodeLog(paths["log"], state["log_pending"]) as log:
        try:
            pool.wait_until_ready(stopped)
            for worker in pool.idle():
                if wanted(state, pool, last_episode) and not stopped():
                    hand_out(pool, worker, state, snapshot)
            while pool.busy and not stopped():
                # -- collect: the next finished episode's gradient sums, and the weights it was played with
                result = pool.next_result(timeout=0.2)
                if result is None:
                    continue
                worker, sums, played = result        # sums: EpisodeSums, with its score and steps
                count_episode(state, sums)
                if batch.episodes + 1 < hyper["batch_size"] and wanted(state, pool, last_episode):
                    hand_out(pool, worker, state, snapshot)    # keep it busy while we learn

                # -- learn: the episode's gradient sums join the batch
                batch.add(sums)
                lag = max(lag, snapshot.version - played.version)

                # -- log
                window_steps += sums.steps
                log.append(state, sums, clock.seconds())
                if not args.quiet:
                    print_episode(state, sums, clock)

                # -- update: every batch_size episodes (>=: --batch-size may shrink on resume)
                if batch.episodes >= hyper["batch_size"]:
                    update(model, cache, batch, dict(hyper, lr=learning_rate(state)))
                    state["updates"] += 1
                    changed[state["updates"]] = batch.touched.copy()
                    changed.pop(state["updates"] - PATCHES_KEPT, None)
                    rate = window_steps / max(time.time() - window_start, 1e-9)
                    print_update(state, batch.steps, batch.episodes, rate, lag, clock)
                    window_start, window_steps, lag = time.time(), 0, 0
                    batch.reset()
                    snapshot = WeightsSnapshot(state["updates"], play_weights(model), changed)
                    if wanted(state, pool, last_episode):
                        hand_out(pool, worker, state, snapshot)   # with the new weights, before the save

                    # -- save: every save_every episodes; pictures at most every PICTURES_EVERY s
                    if state["episode"] - saves.episode >= args.save_every:
                        log.sync()
                        pictures = last_pictures is None or time.time() - last_pictures >= PICTURES_EVERY
                        if saves.save(state, batch, clock, f"every {args.save_every} episodes", pictures):
                            last_pictures = time.time() if pictures else last_pictures
        except WorkerError as e:
            if not stopped():                 # a worker killed by the same signal is no failure
                return e, batch, clock
    return (signal.Signals(Stop.signum).name if Stop.signum else "done"), batch, clock


def print_episode(state, episode, clock):
    print(f"episode {state['episode']}: score {episode.score:+d}, running mean {state['running_mean']:+.2f}, "
          f"{episode.steps} steps, {clock}")


def print_update(state, steps, episodes, steps_per_second, lag, clock):
    print(f"update {state['updates']}: {steps} steps in {episodes} episodes, {steps_per_second:,.0f} steps/s, "
          f"running mean {state['running_mean']:+.2f}, weights up to {lag} update(s) old, "
          f"total {state['total_steps']:,} steps, {clock}")


def print_start(state, how):
    hyper = state["hyper"]
    print(f"training {how}, from episode {state['episode'] + 1}; lr {hyper['lr']}, batch {hyper['batch_size']}, "
          f"gamma {hyper['gamma']}, decay {hyper['decay_rate']}, returns standardized per {hyper['standardize']}, "
          f"{hyper['hidden']} hidden units, seed {hyper['seed']}"
          + (f", entropy bonus {hyper['entropy']}" if hyper["entropy"] else ""))


def wanted(state, pool, last_episode):
    """Whether another episode should be started (--episodes counts the ones being played too)."""
    return last_episode is None or state["episode"] + len(pool.busy) < last_episode


def hand_out(pool, worker, state, snapshot):
    """Give worker the next episode to play (a task number: its random numbers derive from it)."""
    pool.start(worker, state["next_task"], snapshot)
    state["next_task"] += 1


def count_episode(state, episode):
    """The run's counters and the running mean score, after one more episode."""
    state["episode"] += 1
    state["total_steps"] += episode.steps
    previous = state["running_mean"]
    state["running_mean"] = episode.score if previous is None else (
        RUNNING_MEAN_DECAY * previous + (1 - RUNNING_MEAN_DECAY) * episode.score)


# ================================================================ BOOK-KEEPING
# Everything below is the program around the algorithm: the command line, the training state and
# its checkpoints, the per-episode log, watching an agent.

CHECKPOINT_FILE = "pong_pg.pkl"
LOG_FILE = "log.csv"
SHIPPED_AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "pretrained.pkl")
LOG_COLUMNS = ["episode", "score", "running_mean", "steps", "total_steps", "update", "wall_seconds"]
HYPER_FLAGS = {"hidden": HIDDEN, "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "gamma": GAMMA,
               "decay_rate": DECAY_RATE, "standardize": "batch", "entropy": ENTROPY}
PRESETS = {"2016": {"lr": 1e-4, "decay_rate": 0.99, "standardize": "episode", "entropy": 0.0}}   # the 2016 script's


# ---------------------------------------------------------------- command line

def _number(kind, check, requirement):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is invalid: it must be {requirement}")
        return value
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
unit_interval = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
decay_interval = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def available_cores():
    """The cores this process may run on (sched_getaffinity, where the OS has it), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train a numpy policy network to play Pong from pixels (REINFORCE + RMSProp).",
        epilog="Hyperparameters left unset take their defaults on a new run and the checkpoint's "
               "values on --resume.")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir (where the "
                   "directory holds no run yet, start one: the same command works every night)")
    p.add_argument("--init-from", metavar="FILE", help="start a new run from the weights in FILE: an agent "
                   "file (checkpoints/pretrained.pkl, an --export), a training checkpoint (its RMSProp cache "
                   "too), or the 2016 script's save.p; hyperparameters from the flags")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where checkpoints and the log live "
                   "(default: %(default)s)")
    p.add_argument("--episodes", type=positive_int, help="stop after this many more episodes, save and "
                   "exit (default: run until stopped)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, help=f"processes playing episodes (default: the cores "
                   f"available, here {available_cores()})")
    p.add_argument("--plain", action="store_true", help="train with the 2016 script's loop as written: one "
                   "process, float64, dense frames (slower; the same numbers as the fast trainer)")
    p.add_argument("--save-every", type=positive_int, default=SAVE_EVERY,
                   help="episodes between checkpoints (default: %(default)s)")
    p.add_argument("--hidden", type=positive_int, help=f"hidden units (default: {HIDDEN})")
    p.add_argument("--batch-size", type=positive_int, help=f"episodes per update (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=positive_float, help=f"learning rate (default: {LEARNING_RATE})")
    p.add_argument("--gamma", type=unit_interval, help=f"reward discount (default: {GAMMA})")
    p.add_argument("--decay-rate", type=decay_interval, help=f"RMSProp decay (default: {DECAY_RATE})")
    p.add_argument("--entropy", type=nonnegative_float, metavar="BETA", help="weight of an entropy bonus, "
                   f"BETA * sum_t H(P(UP)), which keeps P(UP) from 0 and 1 (default: {ENTROPY}; 0: none)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="2016: train as the 2016 script does: learning "
                   "rate 1e-4, RMSProp decay 0.99, returns standardized per episode, no entropy bonus (flags win)")
    p.set_defaults(standardize=None)
    p.add_argument("--quiet", action="store_true", help="print only the per-update summaries")
    p.add_argument("--render", action="store_true", help="while training, show one worker's games in a "
                   "window (the others keep training at full speed)")
    group = p.add_argument_group("watching a trained agent (the latest checkpoint in --checkpoint-dir, "
                                 "else the shipped agent)")
    group.add_argument("--play", action="store_true", help="show the agent playing in a window")
    group.add_argument("--record", metavar="FILE", help="write a video of one game (.mp4 or .gif); "
                       "needs no display")
    group.add_argument("--eval", type=positive_int, metavar="N", help="play N games with the sampled and N "
                       "with the greedy policy, no learning, and print the statistics")
    group.add_argument("--plot", action="store_true", help="write the learning-curve and weights PNGs "
                       "into --checkpoint-dir")
    group.add_argument("--export", metavar="FILE", help="write the agent's weights alone (5 MB) to FILE, "
                       "to share it or watch it with --checkpoint FILE")
    group.add_argument("--format", choices=["pong_pg", "2016"], default="pong_pg", help="--export: pong_pg's "
                       "safe file (default), or 2016: a plain pickle of {'W1', 'W2'} as the 2016 script's save.p")
    group.add_argument("--checkpoint", metavar="FILE", help="the agent to watch: a checkpoint, an agent file, or "
                       "the 2016 script's save.p")
    group.add_argument("--annotate", action="store_true", help="--play / --record: beside the game, what the "
                       "network sees and does: its difference frame, P(UP), the hidden units, the actions")
    group.add_argument("--greedy", action="store_true", help="--play / --record: always take the more "
                       "likely action instead of sampling")
    group.add_argument("--max-steps", type=positive_int, metavar="N", help="--play / --record: end each "
                       "game after N steps")
    args = p.parse_args(argv)
    for name, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    modes = [flag for flag, on in (("--play", args.play), ("--eval", args.eval), ("--plot", args.plot),
                                   ("--record", args.record), ("--export", args.export)) if on]
    if len(modes) > 1 and modes != ["--play", "--record"]:
        p.error(f"{' and '.join(modes)} cannot be combined")
    if modes and (args.resume or args.render or args.init_from):
        p.error(f"{modes[0]} watches an agent; --resume, --init-from and --render are for training")
    if args.resume and args.init_from:
        p.error("--init-from starts a new run; --resume continues one: choose one")
    clash = [flag for flag, on in (("--workers", args.workers), ("--render", args.render)) if on] + modes
    if args.plain and clash:
        p.error(f"--plain trains in one process, without a window: {clash[0]} does not go with it")
    args.workers = args.workers or available_cores()
    if args.annotate and not (args.play or args.record):
        p.error("--annotate goes with --play or --record")
    if args.format != "pong_pg" and not args.export:
        p.error("--format goes with --export")
    if args.record and not args.record.lower().endswith((".mp4", ".gif")):
        p.error(f"--record {args.record}: the file name must end in .mp4 or .gif")
    args.watching = bool(modes)
    return args


def fail(message, code=1):
    print(f"pong_pg: error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- the training state

def new_state(hyper, seed):
    model = init_model(hyper["hidden"], np.random.default_rng(seed))
    return {"hyper": dict(hyper, seed=seed), "model": model,
            "cache": {k: np.zeros_like(v) for k, v in model.items()},   # RMSProp's running mean of g^2
            "episode": 0, "total_steps": 0, "updates": 0, "next_task": 0,
            "running_mean": None, "wall_seconds": 0.0, "batch": None, "plain_batch": None,
            "warmup_from": None,    # the update from which the learning rate warms up (learning_rate), if any
            "log_pending": []}      # log rows the disk did not take yet (written with the next row that fits)


def check_arrays(state, parts, path):
    """Raise CheckpointError unless state[part] holds finite W1 (H, 6400) and W2 (H,) for each part."""
    hidden = state["hyper"]["hidden"]
    for part in parts:
        for k, shape in {"W1": (hidden, D), "W2": (hidden,)}.items():
            array = state[part][k]
            if not isinstance(array, np.ndarray) or array.shape != shape:
                raise CheckpointError(f"checkpoint {path} is damaged: {part} {k} is not {shape}")
            if not np.all(np.isfinite(array)):
                raise CheckpointError(f"checkpoint {path} holds non-finite {part} {k}")


def load_state(path):
    """A training state from a checkpoint; CheckpointError unless it is whole and usable."""
    state = checkpoint.load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pong_pg checkpoint")
    try:
        check_arrays(state, ("model", "cache"), path)
        for k in ("episode", "total_steps", "updates", "next_task"):
            if not isinstance(state[k], int) or state[k] < 0:
                raise CheckpointError(f"checkpoint {path} is damaged: bad {k}")
        state["hyper"].setdefault("standardize", "batch")     # checkpoints from before the switch
        state["hyper"].setdefault("entropy", 0.0)             # and from before the entropy bonus
        for k in HYPER_FLAGS:
            state["hyper"][k]
        state.setdefault("log_pending", [])
        if not all(isinstance(row, str) for row in state["log_pending"]):
            raise CheckpointError(f"checkpoint {path} is damaged: bad log rows")
        start = state.setdefault("warmup_from", None)
        if start is not None and not (isinstance(start, int) and 0 <= start <= state["updates"]):
            raise CheckpointError(f"checkpoint {path} is damaged: bad warmup_from")
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: it lacks part of the training state") from None
    try:
        BatchGradient.from_state(state["batch"], state["hyper"]["hidden"],
                                 *(settings_of(state["batch"]) if state["batch"] else (False, 0.0)))
        state.setdefault("plain_batch", None)                    # checkpoints from before --plain
        for e in episodes_of_plain_batch(dict(state)):           # (a copy: the state keeps its batch)
            if not (len(e.indptr) == e.steps + 1 == len(e.rewards) + 1 and e.indptr[-1] == len(e.idx) == len(e.vals)
                    and np.all(np.diff(e.indptr) >= 0) and np.all((e.idx >= 0) & (e.idx < D))):
                raise ValueError("an unfinished episode does not decode")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: its unfinished batch does not decode") from None
    return state


def start_seed(state):
    """The seed of the random weights that an agent's training began from, carried on through --init-from
    and --export: a run's own seed, or the start_seed of the agent it was initialised from. None where it
    is unknown (a 2016 save.p, an agent file that predates start_seed) or damaged."""
    if "start_seed" in state:
        seed = state["start_seed"]
    else:
        seed = None if state.get("init_from") else state.get("hyper", {}).get("seed")
    return seed if type(seed) is int and seed >= 0 else None


def initial_W1(state):
    """The random W1 the agent's training began from, which its start seed regenerates exactly (None
    where that seed is unknown)."""
    seed = start_seed(state)
    if seed is None:
        return None
    return init_model(state["model"]["W1"].shape[0], np.random.default_rng(seed))["W1"]


def start_from_agent(args):
    """--init-from FILE: (the state FILE holds, its number of hidden units); a bad FILE or a --hidden
    that does not fit it ends here (exit 2)."""
    try:
        agent = load_agent(args.init_from)
        if "cache" in agent:
            check_arrays(agent, ("cache",), args.init_from)
    except CheckpointError as e:
        fail(e, code=2)
    except (KeyError, TypeError, AttributeError):
        fail(f"checkpoint {args.init_from} is damaged: its RMSProp cache does not fit its weights", code=2)
    hidden = agent["model"]["W1"].shape[0]
    if args.hidden is not None and args.hidden != hidden:
        fail(f"--init-from {args.init_from} has {hidden} hidden units, --hidden asks for {args.hidden}", code=2)
    return agent, hidden


def load_agent(path):
    """The weights of a training checkpoint or of an agent file (weights only, like the shipped one)."""
    state = checkpoint.load(path)
    try:
        check_arrays(state, ("model",), path)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: it holds no policy weights") from None
    return state


def choose_hyperparameters(args, state):
    """Flags given now win; unset flags take the checkpoint's values (or the defaults on a new run)."""
    hyper = {}
    for name, default in HYPER_FLAGS.items():
        given = getattr(args, name)
        saved = state["hyper"][name] if state else default
        if state and given is not None and given != saved:
            if name == "hidden":
                fail(f"the checkpoint has {saved} hidden units, --hidden asks for {given}")
            print(f"note: {name} changes from {saved} to {given} on resume")
        hyper[name] = given if given is not None else saved
    return hyper


class Clock:
    """Wall time of the run, across resumes: the checkpoint's seconds plus this process's."""

    def __init__(self, seconds_before):
        self.start = time.time() - seconds_before

    def seconds(self):
        return time.time() - self.start

    def __str__(self):
        minutes, secs = divmod(int(self.seconds()), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Saves:
    """The run's checkpoint saves. A save that fails (a full disk) keeps the previous checkpoint
    whole, says so once with the reason, and training goes on, trying again at each update until the
    disk takes it: then "saved ... (N saves had failed)". `episode` is the episode the checkpoint on
    disk holds."""

    def __init__(self, paths, episode):
        self.paths, self.episode = paths, episode
        self.failed, self.error = 0, None          # book-keeping: saves failed in a row, and why

    def save(self, state, batch, clock, reason, pictures=True):
        """Write the checkpoint (the unfinished batch included: a BatchGradient, or --plain's list of
        PlainEpisode) and, if asked, redraw the pictures. Returns whether it was written."""
        state["wall_seconds"] = clock.seconds()
        keep_unfinished_batch(state, batch)
        try:
            checkpoint.save(self.paths["checkpoint"], state)
        except OSError as e:
            self.error = e.strerror or str(e)
            if not self.failed:
                print(f"warning: could not save the checkpoint ({self.error}); {self.paths['checkpoint']} "
                      f"still holds episode {self.episode}; training goes on and saves as soon as the disk "
                      f"takes it", file=sys.stderr)
            self.failed += 1
            return False
        had_failed = f"; {self.failed} save(s) had failed" if self.failed else ""
        self.episode, self.failed = state["episode"], 0
        print(f"saved {self.paths['checkpoint']} at episode {state['episode']} ({reason}{had_failed})")
        if pictures:
            try:
                watch.draw_pictures(os.path.dirname(self.paths["checkpoint"]) or ".", state["model"]["W1"],
                                    self.paths["log"], initial_W1(state), moment=(state["episode"],
                                                                                  state["running_mean"]))
            except Exception as e:  # noqa: BLE001 (the pictures are a convenience: report, train on)
                print(f"note: could not draw the pictures ({e})", file=sys.stderr)
        return True

    def final_failure(self, state):
        """The one line for a stop whose final save failed: why, what is kept, what is lost, what to do."""
        lost = state["episode"] - self.episode
        return (f"the final checkpoint could not be saved ({self.error}): {self.paths['checkpoint']} holds "
                f"episode {self.episode}, the {lost} episode(s) since are lost; once the disk has room, "
                f"python pong_pg.py --resume continues from episode {self.episode}")


# ---------------------------------------------------------------- the unfinished batch, across the two trainers
# A checkpoint keeps the fast trainer's unfinished batch as its gradient sums ("batch"), and --plain's
# as its episodes' difference frames, actions and rewards ("plain_batch", in Episode's compact form).
# The fast trainer takes either: it computes the sums of --plain's episodes. --plain cannot replay
# sums: a fast trainer's unfinished batch is dropped there, with a note.

def keep_unfinished_batch(state, batch):
    """Put the unfinished batch (a BatchGradient, or a list of PlainEpisode) into the state to save."""
    if isinstance(batch, BatchGradient):
        state["batch"], state["plain_batch"] = (batch.state() if batch.episodes else None), None
    else:
        state["batch"] = None
        state["plain_batch"] = {str(i): vars(compact_plain_episode(e)) for i, e in enumerate(batch)} or None


def compact_plain_episode(episode):
    """A PlainEpisode as an Episode: the nonzero pixels of its difference frames, its actions, rewards."""
    steps, pixels = np.nonzero(episode.xs)
    return Episode(np.searchsorted(steps, np.arange(episode.steps + 1)).astype(np.int32), pixels.astype(np.int16),
                   episode.xs[steps, pixels], episode.ys.astype(np.uint8), episode.rewards.astype(np.int8))


def episodes_of_plain_batch(state):
    """--plain's unfinished batch in state, as Episodes (and none left in state)."""
    kept = state.get("plain_batch") or {}
    state["plain_batch"] = None
    return [Episode(**kept[str(i)]) for i in range(len(kept))]


def unfinished_plain_batch(state, model):
    """For --plain: the checkpoint's unfinished batch as PlainEpisodes, h and y - p computed again with
    model (the weights they were played with: no update came between), step by step as in play."""
    if state.get("batch"):
        print(f"note: the unfinished batch ({state['batch']['episodes']} episode(s)) was kept as the fast "
              f"trainer's gradient sums, which --plain cannot replay: it is dropped")
        state["batch"] = None
    replayed = []
    for episode in episodes_of_plain_batch(state):
        xs = np.zeros((episode.steps, D), np.int8)
        xs[np.repeat(np.arange(episode.steps), np.diff(episode.indptr)), episode.idx] = episode.vals
        ps, hs = zip(*(policy_forward(model, x.astype(np.float64)) for x in xs), strict=True)
        ys = episode.up.astype(np.float64)
        replayed.append(PlainEpisode(xs, np.array(hs), ys, ys - np.array(ps), episode.rewards.astype(np.float64)))
    return replayed


# ---------------------------------------------------------------- the per-episode CSV log

def trim_log(path, last_episode):
    """Keep the header and the rows of episodes 1..last_episode: rows written after the checkpoint
    was saved (those episodes will be played again) and a torn last line are dropped. Returns the
    last episode the log then holds (0 if none)."""
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    kept = lines[:1]
    for line in lines[1:]:
        fields = line.rstrip("\r\n").split(",")
        if (line.endswith("\n") and len(fields) == len(LOG_COLUMNS) and fields[0].isdigit()
                and int(fields[0]) == len(kept) and int(fields[0]) <= last_episode):
            kept.append(line)
    if kept != lines:
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", newline="") as f:
                f.writelines(kept)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return len(kept) - 1


def log_row_episode(row):
    return int(row.split(",", 1)[0])


class EpisodeLog:
    """log.csv, one row per episode, appended as it is played. A row the disk does not take (full)
    waits in `pending` (the checkpoint's list, so a save keeps it too) and is written, whole, with the
    next row that fits: the log never holds a torn row, and never loses one. A context manager."""

    def __init__(self, path, pending):
        self.path, self.pending, self.failing = path, pending, False
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size == 0:
            self.pending.insert(0, ",".join(LOG_COLUMNS) + "\n")
        self.write_pending()

    def append(self, state, episode, wall_seconds):
        self.pending.append(f"{state['episode']},{episode.score},{state['running_mean']:.4f},{episode.steps},"
                            f"{state['total_steps']},{state['updates']},{wall_seconds:.1f}\n")
        self.write_pending()

    def write_pending(self):
        """Write the pending rows in one append; on failure cut the file back to its whole rows."""
        if not self.pending:
            return
        data = "".join(self.pending).encode()
        size = os.fstat(self.fd).st_size
        try:
            if os.write(self.fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, size)
            if not self.failing:
                print(f"warning: could not write to {self.path} ({e.strerror or e}); its rows wait in memory "
                      f"and in the checkpoint until they fit", file=sys.stderr)
            self.failing = True
            return
        self.pending.clear()
        if self.failing:
            print(f"note: {self.path} is written again, no row lost", file=sys.stderr)
        self.failing = False

    def sync(self):
        """Flush the log to disk (before a checkpoint is saved, so that a power loss cannot leave the
        log behind it)."""
        self.write_pending()
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        os.close(self.fd)


# ---------------------------------------------------------------- watching an agent

def find_agent(args):
    """--checkpoint, else the run in --checkpoint-dir, else the shipped agent."""
    if args.checkpoint:
        return args.checkpoint
    own = os.path.join(args.checkpoint_dir, CHECKPOINT_FILE)
    if os.path.exists(own) or not os.path.exists(SHIPPED_AGENT):
        return own
    print(f"no run of your own in {args.checkpoint_dir}/ yet: using the shipped agent {SHIPPED_AGENT}")
    return SHIPPED_AGENT


def watch_agent(args):
    """--play, --record, --eval, --plot, --export."""
    path = find_agent(args)
    try:
        state = load_agent(path)
    except CheckpointError as e:
        hint = "" if os.path.exists(path) else " (train first: python pong_pg.py)"
        fail(f"{e}{hint}", code=2 if args.checkpoint else 1)     # a file named on the command line: bad input
    weights = play_weights(state["model"])
    print(f"agent {path}: trained for {state.get('episode', '?')} episodes, "
          f"running mean {state.get('running_mean') or 0:+.2f}")
    if args.export:
        agent = {k: state[k] for k in ("hyper", "episode", "total_steps", "running_mean") if k in state}
        agent["model"] = {k: v.astype(np.float32) for k, v in state["model"].items()}   # a --plain run's too
        agent["start_seed"] = start_seed(state)      # hyper's seed is not the start of a run from --init-from
        try:
            if args.format == "2016":
                checkpoint.save_2016(args.export, state["model"])
            else:
                checkpoint.save(args.export, agent)
        except OSError as e:
            fail(f"cannot write {args.export}: {e.strerror or e}")
        print(f"wrote {args.export}")
    elif args.plot:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        env = make_env()                         # the pixels the agent's own games change, and how often
        env.reset(seed=args.seed)
        seen = watch.pixel_counts([play_episode(env, weights, task_rng(args.seed, game)) for game in range(2)])
        try:
            written = watch.draw_pictures(args.checkpoint_dir, state["model"]["W1"],
                                          os.path.join(args.checkpoint_dir, LOG_FILE), initial_W1(state),
                                          seen=seen, W2=state["model"]["W2"])
            written.append(watch.weights_animation(args.checkpoint_dir))
        except (ImportError, watch.MissingDependency) as e:
            fail(e)
        for picture in filter(None, written):
            print(f"wrote {picture}")
    elif args.eval:
        print(f"evaluating over {args.eval} games per policy on {args.workers} worker(s)")
        results = watch.evaluate(play_episode, weights, args.eval, args.seed, args.workers, stopped)
        if results:
            watch.print_evaluation(results)
    elif args.record:
        try:
            watch.record(play_episode, weights, args.record, args.seed, args.greedy, args.max_steps, stopped,
                         policy_forward_sparse if args.annotate else None)
        except watch.MissingDependency as e:
            fail(e)
        except OSError as e:
            fail(f"cannot write {args.record}: {e.strerror or e}")
    else:
        need_display("--play")
        try:
            watch.show(play_episode, weights, args.episodes, args.seed, args.greedy, args.max_steps, stopped,
                       policy_forward_sparse if args.annotate else None)
        except watch.MissingDependency as e:
            fail(e)


def stopped():
    """Whether a stop signal has arrived (the training loop and watching check it between steps)."""
    return Stop.signum is not None


def need_display(flag):
    """On Linux an SDL window needs an X11 or Wayland display; without one it would silently show nothing."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        fail(f"{flag} needs a display and none is set (DISPLAY): use --record agent.mp4 instead, or run "
             f"under a virtual display: xvfb-run python pong_pg.py {flag}")


# ---------------------------------------------------------------- main

def prepare_run(args, paths, agent=None):
    """The state to train from: the checkpoint on --resume (its log trimmed to match), else a new run
    whose first checkpoint is written before it plays (from agent's weights with --init-from)."""
    if args.resume and not any(os.path.exists(paths[what]) for what in ("checkpoint", "log")):
        print(f"no run in {args.checkpoint_dir} yet: starting a new one")    # the overnight command's first night
        args.resume = False
    if args.resume:
        try:
            state = load_state(paths["checkpoint"])
        except CheckpointError as e:
            fail(e)
        state["hyper"].update(choose_hyperparameters(args, state))
        try:
            logged = trim_log(paths["log"], state["episode"])
        except OSError as e:
            fail(f"cannot trim {paths['log']} to the checkpoint: {e.strerror or e}; nothing was changed")
        state["log_pending"] = [row for row in state["log_pending"] if log_row_episode(row) > logged]
        return state
    for what in ("checkpoint", "log"):
        if os.path.exists(paths[what]):
            fail(f"{paths[what]} already exists: add --resume to continue that run, or choose "
                 f"another --checkpoint-dir", code=2)
    state = new_state(choose_hyperparameters(args, None), args.seed)
    if agent is not None:                             # --init-from: FILE's weights instead of random ones
        state["model"] = {k: np.array(v, np.float32) for k, v in agent["model"].items()}
        if "cache" in agent:                          # a training checkpoint: its RMSProp cache goes on too
            state["cache"] = {k: np.array(v, np.float32) for k, v in agent["cache"].items()}
            note = ", with its RMSProp cache"
        else:                                         # an empty cache under trained weights: warm up
            state["warmup_from"] = 0
            note = ("\nits RMSProp cache starts empty: the learning rate warms up, lr*sqrt(1 - decay^t) "
                    "in update t")
        state["init_from"] = args.init_from
        state["start_seed"] = start_seed(agent)      # where FILE's own training began, for the pictures
        print(f"starting from the weights in {args.init_from} (trained for {agent.get('episode', '?')} "
              f"episodes){note}")
    try:
        checkpoint.save(paths["checkpoint"], state)   # from now on, --resume always has a start
    except OSError as e:
        fail(f"cannot write to {args.checkpoint_dir}: {e.strerror or e}")
    return state


def exit_if_stopped():
    """A stop asked for before anything was written ends here, quietly: 128 + the signal's number."""
    if Stop.signum is not None:
        sys.exit(128 + Stop.signum)


def main(argv=None):
    if signal.getsignal(signal.SIGINT) != Stop.handler:    # called from Python: no stop pending yet
        Stop.signum = None
        Stop.catch()
    args = parse_args(argv)
    exit_if_stopped()
    if args.watching:
        watch_agent(args)
        exit_if_stopped()
        return
    agent = None
    if args.init_from:                                 # a bad FILE is refused before anything is written
        agent, args.hidden = start_from_agent(args)
    try:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --checkpoint-dir {args.checkpoint_dir}: {e.strerror or e}")
    paths = {"checkpoint": os.path.join(args.checkpoint_dir, CHECKPOINT_FILE),
             "log": os.path.join(args.checkpoint_dir, LOG_FILE)}
    if args.render:
        need_display("--render")
    try:
        lock = checkpoint.DirectoryLock(args.checkpoint_dir)
    except checkpoint.DirectoryInUse as e:
        holder = f" (pid {e.pid})" if e.pid else ""
        fail(f"{args.checkpoint_dir} is in use by another trainer{holder}: stop it first, or train in "
             f"another --checkpoint-dir")
    except OSError as e:
        fail(f"cannot lock {args.checkpoint_dir}: {e.strerror or e}")
    with lock:                  # one trainer per directory, until this one ends (the OS frees it on a kill)
        exit_if_stopped()
        state = prepare_run(args, paths, agent)
        first_episode = state["episode"]
        lock.name_holder()
        checkpoint.remove_temporaries(args.checkpoint_dir)
        saves = Saves(paths, first_episode)
        try:
            ended, batch, clock = (train_plain if args.plain else train)(args, state, paths, saves)
        except FloatingPointError as e:
            fail(f"training diverged: {e}; stopped without saving, the last checkpoint is kept")
        played = state["episode"] > first_episode         # else the pictures would show nothing new
        if isinstance(ended, WorkerError):
            print(f"pong_pg: error: {ended}", file=sys.stderr)
            reason, code = "after a worker failed", 1
        else:
            reason, code = ("done", 0) if ended == "done" else (f"stopped by {ended}", 128 + Stop.signum)
        if not saves.save(state, batch, clock, reason, played):
            fail(saves.final_failure(state), code=EXIT_LAST_CHECKPOINT_KEPT)
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main()

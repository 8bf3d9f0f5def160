"""pong_pg_fast: the steps of pong_pg.py (the 2016 program) computed faster, and `train`, the loop
that runs them on every core. Each function here names its plain twin in pong_pg.py and computes the
same numbers (tests/test_algorithm.py, tests/test_plain.py):

    policy_forward_sparse  pong_pg.policy_forward      W1 @ x over the few dozen pixels that changed
    play_episode           pong_pg.play_episode_plain  ALE's palette screen, no RGB observation
    episode_sums           pong_pg.batch_gradient_plain the backward pass on sparse frames, in float32,
    BatchGradient                                      summed by episode in the workers
    update                 pong_pg.rmsprop_step        only the columns of W1 the batch touched
    train                  pong_pg.train_plain         workers play while the learner learns

Why it is faster, and by how much: README.md, "Where the speed comes from", and bench/README.md.
"""
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from pong_pg import DOWN, EPSILON, UP, discount_rewards, ensure_finite, entropy_gradient, sigmoid, standardize
from preprocess import D, difference_values, learn_colors, new_color_table, screen_difference, screen_pixels
from workers import WeightsVersion, WorkerError, WorkerPool, game_step

# ---------------------------------------------------------------- the policy network

def policy_forward_sparse(weights, idx, vals):
    """pong_pg.policy_forward's (p, h) for a sparse difference frame (pixels idx with values vals), with weights =
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




# ---------------------------------------------------------------- playing an episode

@dataclass
class SparseEpisode:
    """pong_pg.PlainEpisode's game as the fast path keeps it: each step's sparse difference frame (CSR form: step t's
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
    """Per-step lists of (changed pixels, turned on?), actions and rewards -> a SparseEpisode."""
    counts = [len(i) for i in idxs]
    return SparseEpisode(indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
                   idx=np.concatenate(idxs).astype(np.int16),
                   vals=np.concatenate(turned_on).view(np.int8) * np.int8(2) - np.int8(1),   # +1 / -1
                   up=np.array(ups, np.uint8), rewards=np.array(rewards, np.int8))


DICE_AT_ONCE = 1024    # play_episode draws its random numbers this many at a time


def play_episode(env, weights, rng, greedy=False, on_step=None, max_steps=None):
    """Play one episode with weights = play_weights(model): the same game as pong_pg.play_episode_plain, with
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
    colors = new_color_table()                                       # filled in from the game's first frames
    learn_colors(colors, previous, screen, ale.getScreenRGB)
    idxs, turned_on, ups, rewards = [], [], [], []
    while True:
        if len(ups) % DICE_AT_ONCE == 0:
            dice = rng.random(DICE_AT_ONCE)      # the next rolls: the same numbers as rng.random() one by one
        ale.getScreen(screen)
        screen_pixels(screen, pixels)
        idx, on = screen_difference(pixels, previous, colors, screen, ale.getScreenRGB)
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


# ---------------------------------------------------------------- the backward pass, summed by episode

CHUNK_STEPS = 128    # steps per slice in the sparse backward pass (bounds its memory)


def accumulate_sparse_gradients(W1T, W2, indptr, idx, vals, up, coefs, dW1T, dW2, row=None, entropy=False):
    """pong_pg.policy_backward on sparse frames, for K weightings at once: adds the gradient of
    sum_t coefs[t, k] log pi(a_t | x_t) for each column k of coefs (T, K) into dW1T (6400, K*H;
    column k*H + i is hidden unit i of weighting k) and dW2 (K, H); with entropy, the gradient of
    sum_t H_t (the policy's entropy) as one more weighting, the last. row: the row of dW1T that holds
    each pixel (default: row = pixel), so that dW1T may hold only the pixels the frames touch.

    Frames are in CSR form (SparseEpisode.frames). A slice of CHUNK_STEPS steps touches a few hundred
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


def with_entropy_sums(hyper):
    """Whether the episodes sum the entropy bonus's gradient: a bonus is set, from the start or late."""
    return hyper.entropy > 0 or bool(hyper.late_entropy)


class BatchGradient:
    """The batch's gradient, without keeping the batch: each episode's sums are added when they
    arrive, then dropped.

    With A_t = (R_t - mean) / std over the batch and g_t = grad log pi(a_t | x_t):
        sum_t A_t g_t = (sum_t R_t g_t - mean * sum_t g_t) / std
    so each episode adds its sum R g, sum g, sum R, sum R^2 and step count (EpisodeSums). The W1 sums
    are kept transposed, side by side: sums_W1T[:, :H] = (sum R g).T, sums_W1T[:, H:] = (sum g).T,
    in float32 like the weights and the episodes' sums they add up (half the memory traffic of float64).

    per_episode (the 2016 script's way, --preset 2016): each episode's returns are standardized on
    their own, so its R is already A and the first sums are the gradient. entropy_sums: the episodes
    add the entropy bonus's sum_t dH_t as a third sum (weighted by beta in gradient())."""

    def __init__(self, hidden, per_episode=False, entropy_sums=False):
        self.per_episode, self.entropy_sums = per_episode, entropy_sums
        self.sums_W1T = np.zeros((D, (2 + entropy_sums) * hidden), np.float32)
        self.sums_W2 = np.zeros((2 + entropy_sums, hidden))
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
        self.add(episode_sums(weights, episode, gamma, self.per_episode, self.entropy_sums))

    def pixels(self):
        """The pixels the batch's frames touched, sorted: W1's gradient is zero in the other columns."""
        return self.touched.nonzero()[0]

    def gradient(self, pixels=slice(None), entropy=0.0):
        """{"W1", "W2"}: sum_t A_t g_t (+ entropy * sum_t dH_t, entropy the bonus's weight beta) over
        the batch; "W1" only for the columns of these pixels."""
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
        if entropy:
            W1T += entropy * sums[:, 2 * H:]                           # the entropy bonus
            W2 = W2 + entropy * self.sums_W2[2]
        return {"W1": W1T.T, "W2": W2}

    def state(self):
        """The unfinished batch as a checkpoint keeps it, compactly: the W1 sums of the pixels the
        batch touched (the rest are zero), in float32; the other sums as they are."""
        pixels = self.pixels()
        return {"pixels": pixels.astype(np.int16), "sums_W1T": self.sums_W1T[pixels],
                "sums_W2": self.sums_W2.copy(), "sum_R": self.sum_R, "sum_R2": self.sum_R2,
                "steps": self.steps, "episodes": self.episodes, "per_episode": self.per_episode}

    @classmethod
    def resumed(cls, kept, hyper):
        """The unfinished batch a checkpoint kept (state(), which training_run.load_state checked), or an
        empty one for None; where it was summed with other settings, an empty one and a note (its
        episodes are in the log: at most batch_size - 1 episodes of learning are lost)."""
        per_episode = hyper.standardize == "episode"
        batch = cls(hyper.hidden, per_episode, with_entropy_sums(hyper))
        if kept is None:
            return batch
        kept_entropy_sums = np.shape(kept["sums_W2"])[0] == 3
        if (bool(kept.get("per_episode", False)), kept_entropy_sums) != (per_episode, batch.entropy_sums):
            print("note: the unfinished batch was summed with other settings (returns standardized per batch or "
                  "per episode, the entropy bonus): it is dropped")
            return batch
        pixels = kept.get("pixels", slice(None))            # older checkpoints keep every pixel's sums
        batch.sums_W1T[pixels] = kept["sums_W1T"]
        batch.touched[pixels] = True
        batch.sums_W2[:] = kept["sums_W2"]
        batch.sum_R, batch.sum_R2 = float(kept["sum_R"]), float(kept["sum_R2"])
        batch.steps, batch.episodes = int(kept["steps"]), int(kept["episodes"])
        return batch


# ---------------------------------------------------------------- RMSProp on the touched columns

UPDATE_BLOCK = 512    # pixels (columns of W1) per block of update()


def pixel_major(W1):
    """The same (hidden, 6400) matrix W1, stored pixel by pixel: the transposed view of a contiguous
    (6400, hidden) array, in which each pixel's column of W1 is one contiguous row. That is how the
    learner keeps W1 and its RMSProp cache: update() reads and writes whole columns, the touched
    pixels', and the workers' W1T is a plain copy of it. W1 @ x and every formula read it as before."""
    return np.ascontiguousarray(W1.T).T


def rmsprop_rows(W, cache, g, lr, decay):
    """pong_pg.rmsprop_step's formula, in place, on rows whose cache was multiplied by decay already:
    cache += (1-decay) g^2; W += lr g / (sqrt(cache) + eps). g is cast to W's type first."""
    g = g.astype(W.dtype, copy=False)
    g2 = np.square(g)
    g2 *= 1 - decay
    cache += g2                                  # cache += (1-decay) g^2, in place
    step, root = np.multiply(g, lr), np.sqrt(cache)
    root += EPSILON
    step /= root
    W += step                                    # W += lr g / (sqrt(cache) + eps), in place


def update(model, cache, batch, lr, decay, entropy=0.0):
    """pong_pg.rmsprop_step(model, cache, batch.gradient(entropy=entropy), lr, decay), bit for bit,
    done where it does something. In the column of a pixel that no frame of the batch touched, W1's
    gradient is zero, so the step there only decays the cache (cache*decay + 0, the weights + 0): all
    of the cache is decayed at once, then the touched pixels' columns take the rest of the step, a
    block of UPDATE_BLOCK at a time (a block's gradient, cache and weights stay in the CPU's cache
    through the formula's steps; with W1 pixel_major() a column is a contiguous row)."""
    pixels = batch.pixels()
    grad_W2 = batch.gradient(pixels[:0], entropy)["W2"]
    ensure_finite("the gradient", grad_W2)
    cache["W2"] *= decay
    rmsprop_rows(model["W2"], cache["W2"], grad_W2, lr, decay)
    W1T, cache_W1T = model["W1"].T, cache["W1"].T              # views: row p is pixel p's column
    cache_W1T *= decay                                         # cache = decay * cache, in every column
    for a in range(0, len(pixels), UPDATE_BLOCK):
        rows = pixels[a:a + UPDATE_BLOCK]
        grad = batch.gradient(rows, entropy)["W1"].T           # the block's columns of W1's gradient, as rows
        ensure_finite("the gradient", grad)
        W, cache_W = W1T[rows], cache_W1T[rows]                # (copies)
        rmsprop_rows(W, cache_W, grad, lr, decay)              # + (1-decay) g^2, and the step
        W1T[rows], cache_W1T[rows] = W, cache_W
    ensure_finite("the weights or the RMSProp cache", model, cache)


# ---------------------------------------------------------------- the training loop

PATCHES_KEPT = 16       # updates whose changed pixels are remembered, for patching older weights
PATCH_AT_MOST = 0.75    # of W1's rows: a patch that would change more sends all the weights


@dataclass
class WeightsSnapshot(WeightsVersion):
    """The weights the workers play with (play_weights()), numbered by the updates they have had, and
    which pixels' columns of W1 each recent update changed ({version: bool mask of pixels}, its own
    copy): the other columns kept their weights, so a worker holding an older version needs only the
    changed rows of W1T."""
    changed: dict = field(default_factory=dict)
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


class WeightsHistory:
    """The snapshots of the weights the learner hands out, one per update, and which pixels' columns
    the last PATCHES_KEPT updates changed."""

    def __init__(self, version, model):
        self.version, self.changed = version, {}
        self.latest = WeightsSnapshot(version, play_weights(model))

    def after_update(self, model, touched):
        """The snapshot of the weights after one more update, which changed the columns of `touched`."""
        self.version += 1
        self.changed[self.version] = touched.copy()
        self.changed.pop(self.version - PATCHES_KEPT, None)
        self.latest = WeightsSnapshot(self.version, play_weights(model), dict(self.changed))
        return self.latest


def hand_out(pool, worker, run, snapshot):
    """Give worker the next episode to play with snapshot's weights, if the run wants another (a task
    number: its random numbers derive from it)."""
    if run.wants_another_episode(in_play=len(pool.busy)):
        pool.start(worker, run.new_task(), snapshot)


def train(run, workers, render=False):
    """pong_pg.train_plain on every core: worker processes play episodes with the newest weights they
    were handed and compute each episode's gradient sums (play_for_batch); the learner adds them to
    the batch; every batch_size episodes, one RMSProp step (update), and the new weights to the
    workers. An idle worker gets its next episode at once: its weights may be an update old. `run`
    keeps the book-keeping. Returns the unfinished batch, for the checkpoint."""
    hyper = run.hyper
    model, cache = run.weights(np.float32, layout=pixel_major)     # W1 pixel by pixel: update() steps its columns
    batch = BatchGradient.resumed(run.unfinished_batch("fast"), hyper)
    history = WeightsHistory(run.updates, model)
    play = functools.partial(play_for_batch, gamma=hyper.gamma, per_episode=hyper.standardize == "episode",
                             entropy=with_entropy_sums(hyper))
    run.begin(f"with {workers} worker(s)")
    with WorkerPool(workers, play, run.seed, run.next_task, render_first=render) as pool:
        try:
            if pool.wait_until_ready(run.stopped):
                for worker in pool.idle():
                    hand_out(pool, worker, run, history.latest)
            lag = 0                                        # how many updates old the batch's weights were
            while pool.busy and not run.stopped():
                # -- collect the next finished episode's gradient sums, and the weights it was played with
                result = pool.next_result(timeout=0.2)
                if result is None:
                    continue
                worker, sums, played = result
                run.episode_done(sums)                     # count, log, print
                if batch.episodes + 1 < hyper.batch_size:
                    hand_out(pool, worker, run, history.latest)   # keep it busy while we learn

                # -- learn: the episode's gradient sums join the batch
                batch.add(sums)
                lag = max(lag, history.version - played.version)

                # -- every batch_size episodes: one RMSProp step; the new weights go out before the save
                if batch.episodes >= hyper.batch_size:     # (>=: --batch-size may shrink on resume)
                    update(model, cache, batch, run.learning_rate(), run.decay_rate(), run.entropy())
                    hand_out(pool, worker, run, history.after_update(model, batch.touched))
                    run.update_done(batch.steps, batch.episodes, lag)   # count, print, save when due
                    batch.reset()
                    lag = 0
        except WorkerError as e:
            if not run.stopped():                  # a worker killed by the same signal is no failure
                run.worker_failed(e)
    return {"batch": batch.state() if batch.episodes else None}

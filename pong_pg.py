"""pong_pg: learn Atari Pong from pixels with policy gradients (REINFORCE), in numpy.

    python pong_pg.py              train on every core until stopped; Ctrl-C saves a checkpoint and exits
    python pong_pg.py --resume     continue the run in checkpoints/ (where there is none yet, start one)
    python pong_pg.py --plain      train with this file's loop: the 2016 program, one process, float64

This file is the program of the 2016 post "Deep Reinforcement Learning: Pong from Pixels"
(http://karpathy.github.io/2016/05/31/rl/), top to bottom: the hyperparameters, the policy network,
playing an episode, the discounted returns, the backward pass, RMSProp and the training loop
(train_plain). A 2-layer network (6400 -> 200 ReLU -> sigmoid P(UP)) reads 80x80 difference frames,
samples UP or DOWN, and learns with REINFORCE. Its neighbours:

    preprocess.py      the frames: crop, downsample, erase the background, the difference frame
    pong_pg_fast.py    the same steps computed faster (sparse frames, float32, every core): `train`
    training_run.py    the book-keeping: the run's counters, log, printing, checkpoints, pictures
    cli.py             the command line: the flags, training, resuming, watching an agent
"""
import os
import sys

if __name__ == "__main__":         # book-keeping first: a Ctrl-C while the modules load stops cleanly too
    from stopping import OutputThatNeverStops, Stop
    Stop.catch()
    OutputThatNeverStops.install()  # a full disk under `> train.log` must not end training
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread a process (before numpy loads): the workers fill the cores

import math
from dataclasses import dataclass, field

import numpy as np

from preprocess import D, dense_difference, preprocess
from workers import env_seed, make_env, task_rng

# ---------------------------------------------------------------- 1. hyperparameters

def hyperparameter(default, help, valid, must_be, metavar=None):
    """A field of Hyperparameters: its default, its --flag's help, and which values it accepts."""
    return field(default=default, metadata={"help": help, "valid": valid, "must_be": must_be, "metavar": metavar})


@dataclass
class Hyperparameters:
    """The training hyperparameters, each a flag (batch_size is --batch-size). A checkpoint records
    them; --resume follows them, and a flag given then changes one."""
    hidden: int = hyperparameter(200, "hidden units", lambda v: v > 0, "a positive integer")
    batch_size: int = hyperparameter(10, "episodes per parameter update", lambda v: v > 0, "a positive integer")
    lr: float = hyperparameter(3e-3, "learning rate (the 2016 script: 1e-4)", lambda v: 0 < v < math.inf,
                               "a positive number")
    gamma: float = hyperparameter(0.99, "reward discount", lambda v: 0 < v <= 1, "in (0, 1]")
    decay_rate: float = hyperparameter(0.9, "RMSProp decay of the mean squared gradient (the 2016 script: 0.99)",
                                       lambda v: 0 <= v < 1, "in [0, 1)")
    entropy: float = hyperparameter(0.02, "weight of an entropy bonus, BETA * sum_t H(P(UP)), which keeps P(UP) "
                                    "from 0 and 1 (0: none; the 2016 script had none)", lambda v: 0 <= v < math.inf,
                                    "a number >= 0", metavar="BETA")
    late_lr: float = hyperparameter(None, "learning rate from the first time the running mean passes 0 "
                                    "(none: --lr throughout)", lambda v: 0 < v < math.inf, "a positive number")
    late_decay_rate: float = hyperparameter(None, "RMSProp decay from the first time the running mean passes 0 "
                                            "(none: --decay-rate throughout)", lambda v: 0 <= v < 1, "in [0, 1)")
    late_entropy: float = hyperparameter(None, "entropy bonus from the first time the running mean passes 0 "
                                         "(none: --entropy throughout)", lambda v: 0 <= v < math.inf,
                                         "a number >= 0", metavar="BETA")
    standardize: str = "batch"     # the returns: over the whole batch; "episode": each episode alone (2016)


PRESETS = {"2016": {"lr": 1e-4, "decay_rate": 0.99, "standardize": "episode", "entropy": 0.0,   # the script's
                    "late_lr": None, "late_decay_rate": None, "late_entropy": None}}
EPSILON = 1e-5                     # RMSProp: avoids division by zero
RUNNING_MEAN_DECAY = 0.99          # the running mean score: 0.99 * old + 0.01 * the episode's score
UP, DOWN = 2, 3                    # Pong's minimal action set: RIGHT moves our paddle up, LEFT down


# ---------------------------------------------------------------- 2. the policy network

def init_model(hidden, rng):
    """Xavier-style initialisation, float32. W1 is (hidden, 6400), W2 is (hidden,)."""
    return {"W1": (rng.standard_normal((hidden, D)) / np.sqrt(D)).astype(np.float32),
            "W2": (rng.standard_normal(hidden) / np.sqrt(hidden)).astype(np.float32)}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))    # clipped: no overflow; sigmoid(50) is 1 in float64


def policy_forward(model, x):
    """x (6400,) -> (p = P(UP), h)."""
    h = np.maximum(model["W1"] @ x, 0)                   # h = relu(W1 x)
    return sigmoid(model["W2"] @ h), h                   # p = sigmoid(W2 . h)


def entropy_gradient(z):
    """dH/dz of the policy's entropy H = -p log p - (1-p) log(1-p), p = sigmoid(z): -z p (1-p).
    Clipped as sigmoid is; it pulls P(UP) back towards 1/2."""
    z = np.clip(z, -50, 50)
    p = sigmoid(z)
    return -z * p * (1 - p)


# ---------------------------------------------------------------- 3. playing an episode

@dataclass
class PlainEpisode:
    """One game, a row per step: the difference frame x the network read, its hidden activations h,
    the "fake label" y (1 for UP, 0 for DOWN), y - p (the gradient of log pi(action) at the logit) and
    the reward. x is kept as int8 (its values are -1, 0 and 1): 6,400 bytes a step where float64 takes
    51 KB, so that ten games of 5,000 steps fit in 320 MB."""
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
    """One episode from the RGB frames env.step returns (env made with make_env(obs_type="rgb"))."""
    observation, _ = env.reset()
    previous, xs, hs, ys, dlogps, rewards = None, [], [], [], [], []
    while True:
        current = preprocess(observation)                   # 80x80: paddles and ball
        x = dense_difference(current, previous)             # x = cur_x - prev_x: what moved
        previous = current
        p, h = policy_forward(model, x)                     # p = P(UP)
        y = 1.0 if rng.random() < p else 0.0                # roll the dice: UP with probability p
        observation, reward, terminated, truncated, _ = env.step(UP if y else DOWN)
        xs.append(x.astype(np.int8))                        # record x, h, y - p, the reward
        hs.append(h)
        ys.append(y)
        dlogps.append(y - p)                                # d log pi(action) / d logit: the "fake label" y - p
        rewards.append(reward)
        if terminated or truncated:
            return PlainEpisode(np.array(xs), np.array(hs), np.array(ys), np.array(dlogps), np.array(rewards))


# ---------------------------------------------------------------- 4. discounted returns, the advantages

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
    """A_t = (R_t - mean) / std: about half the actions encouraged, half discouraged."""
    return (returns - returns.mean()) / max(returns.std(), 1e-8)


def batch_advantages(episodes, gamma, per_episode=False):
    """Each episode's A_t: its discounted returns, standardized together with those of the whole
    batch (or within the episode, as the 2016 script does, with per_episode)."""
    returns = [discount_rewards(episode.rewards, gamma) for episode in episodes]
    if per_episode:
        return [standardize(R) for R in returns]                          # A_t within each episode
    together = standardize(np.concatenate(returns))                        # A_t over the whole batch
    return np.split(together, np.cumsum([len(R) for R in returns])[:-1])


# ---------------------------------------------------------------- 5. the backward pass
#
# REINFORCE ascends  J = sum_t A_t log pi(a_t | x_t)  (+ beta * sum_t H_t with the entropy bonus).
# With the "fake label" y_t = 1 for UP, 0 for DOWN, d log pi / d logit = y_t - p_t, so the gradient
# at the logit is dlogit_t = A_t (y_t - p_t) (+ beta * entropy_gradient(z_t)).

def policy_backward(model, hs, xs, dlogits):
    """hs (T,H), xs (T,6400), dlogits (T,) -> the gradient of sum_t dlogit_t * logit_t."""
    dW2 = hs.T @ dlogits                          # dJ/dW2 = sum_t dlogit_t h_t
    dh = np.outer(dlogits, model["W2"])           # back through W2
    dh[hs <= 0] = 0                               # back through the relu
    dW1 = dh.T @ xs                               # dJ/dW1 = sum_t dh_t x_t^T
    return {"W1": dW1, "W2": dW2}


def batch_gradient_plain(model, episodes, hyper, entropy):
    """The gradient of J over a batch of PlainEpisodes played with model, entropy the bonus's weight
    beta: the advantages of the whole batch first, then the backward pass one episode at a time into a
    gradient buffer, as the 2016 script does (so that only one episode's x is ever held as floats)."""
    grad_buffer = {k: np.zeros_like(v) for k, v in model.items()}
    advantages = batch_advantages(episodes, hyper.gamma, hyper.standardize == "episode")
    for episode, A in zip(episodes, advantages, strict=True):
        dlogits = A * episode.dlogps                      # modulate the gradient with the advantage
        if entropy:
            dlogits = dlogits + entropy * entropy_gradient(episode.hs @ model["W2"])   # the entropy bonus
        grad = policy_backward(model, episode.hs, episode.xs.astype(model["W1"].dtype), dlogits)
        for k in model:
            grad_buffer[k] += grad[k]                     # accumulate over the batch
    return grad_buffer


# ---------------------------------------------------------------- 6. RMSProp

def rmsprop_step(model, cache, grad, lr, decay):
    """Gradient ascent with RMSProp: each weight's step is lr * g / sqrt(its mean g^2), about lr."""
    for k in grad:
        g = grad[k].astype(model[k].dtype)                          # the gradient, in the weights' type
        cache[k] = decay * cache[k] + (1 - decay) * g ** 2          # the running mean of g^2
        model[k] += lr * g / (np.sqrt(cache[k]) + EPSILON)         # gradient ascent


def learning_rate(hyper, updates, warmup_from=None, late=False):
    """Update number `updates + 1`'s learning rate: lr (late_lr where set, once `late`: the running mean
    has passed 0); but in the t-th update since an RMSProp cache started at zero under trained weights
    (--init-from an agent file), times sqrt(1 - decay^t). Such a cache holds only (1 - decay^t) of the
    mean g^2 it tracks, so its steps would be 1/sqrt(1 - decay^t) times too large, 10x at first with
    decay 0.99, and jolt the trained agent; the factor cancels that (as Adam's bias correction does),
    with the decay in force (the late one once the running mean has passed 0, as a trained agent's first
    game usually makes it). A run from random weights takes the 2016 script's steps."""
    lr = hyper.late_lr if late and hyper.late_lr is not None else hyper.lr
    if warmup_from is None:
        return lr
    return lr * math.sqrt(1 - decay_rate(hyper, late) ** (updates - warmup_from + 1))


def decay_rate(hyper, late=False):
    """RMSProp's decay: decay_rate (late_decay_rate where set, once the running mean has passed 0)."""
    return hyper.late_decay_rate if late and hyper.late_decay_rate is not None else hyper.decay_rate


def entropy_weight(hyper, late=False):
    """The entropy bonus's weight beta: entropy (late_entropy where set, once the running mean has passed 0)."""
    return hyper.late_entropy if late and hyper.late_entropy is not None else hyper.entropy


def ensure_finite(what, *parts):
    """A number that is not finite stops training before it spreads (the run ends without saving)."""
    if not all(np.all(np.isfinite(a)) for part in parts for a in (part.values() if isinstance(part, dict) else [part])):
        raise FloatingPointError(f"{what} is not finite")


# ---------------------------------------------------------------- 7. the training loop

def train_plain(run):
    """The 2016 script's loop (--plain), in one process, float64: play an episode, recording x, h,
    y - p and the rewards; every batch_size episodes, the batch's advantages, the backward pass, one
    RMSProp step. `run` (training_run.Run) keeps the book-keeping: the counters, the log, the printing,
    the checkpoints. It computes what pong_pg_fast.train computes with one worker (tests/test_plain.py).
    Returns the unfinished batch, for the checkpoint."""
    hyper = run.hyper
    model, cache = run.weights(np.float64)                   # float64, as in the post
    episodes = replay_batch(run.unfinished_batch("plain"), model)    # book-keeping: a batch begun before a stop
    env = make_env(obs_type="rgb")                            # env.step returns the RGB frame, as in the post
    env.reset(seed=env_seed(run.seed, 0, run.next_task))      # as pong_pg_fast.train's worker 0 seeds its game
    run.begin("the plain way (one process, float64, dense)")
    while run.wants_another_episode():
        # -- play one episode with the current weights
        episode = play_episode_plain(env, model, task_rng(run.seed, run.new_task()))
        episodes.append(episode)
        run.episode_done(episode)                             # count, log, print

        # -- every batch_size episodes: the batch's gradient, one RMSProp step
        if len(episodes) >= hyper.batch_size:
            grad = batch_gradient_plain(model, episodes, hyper, run.entropy())
            ensure_finite("the gradient", grad)
            rmsprop_step(model, cache, grad, run.learning_rate(), run.decay_rate())
            ensure_finite("the weights or the RMSProp cache", model, cache)
            run.update_done(sum(e.steps for e in episodes), len(episodes))   # count, print, save when due
            episodes = []
    env.close()
    return {"plain_batch": kept_batch(episodes)}


# book-keeping: the unfinished batch across a stop, kept as each step's nonzero pixels of x, y, reward

def kept_batch(episodes):
    kept = {}
    for i, e in enumerate(episodes):
        steps, pixels = np.nonzero(e.xs)
        kept[str(i)] = {"indptr": np.searchsorted(steps, np.arange(e.steps + 1)).astype(np.int32),
                        "idx": pixels.astype(np.int16), "vals": e.xs[steps, pixels],
                        "up": e.ys.astype(np.uint8), "rewards": e.rewards.astype(np.int8)}
    return kept or None


def replay_batch(kept, model):
    """The episodes of kept_batch, h and y - p computed again with model (they were played with it)."""
    replayed = []
    for i in range(len(kept or {})):
        e = kept[str(i)]
        xs = np.zeros((len(e["up"]), D), np.int8)
        xs[np.repeat(np.arange(len(e["up"])), np.diff(e["indptr"])), e["idx"]] = e["vals"]
        ps, hs = zip(*(policy_forward(model, x.astype(np.float64)) for x in xs), strict=True)
        ys = e["up"].astype(np.float64)
        replayed.append(PlainEpisode(xs, np.array(hs), ys, ys - np.array(ps), e["rewards"].astype(np.float64)))
    return replayed


if __name__ == "__main__":
    sys.modules["pong_pg"] = sys.modules["__main__"]   # the other modules import this file as pong_pg: one copy
    import cli
    cli.main()

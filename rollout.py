"""Playing episodes: one episode in one env, and a pool of worker processes that play them on every core.

An episode is kept compact: for each step the sparse difference frame (pixel indices int16 and
values int8, in CSR form), whether the action was UP, and the reward. About 100 bytes a step,
instead of the 51 KB of a dense float64 frame.
"""
import multiprocessing
import signal
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np

from policy import forward_sparse
from preprocess import D, difference_values, learn_colors, new_color_table, screen_difference, screen_pixels

ENV_ID = "ALE/Pong-v5"
UP, DOWN = 2, 3               # Pong's minimal action set: RIGHT moves the paddle up, LEFT down


def make_env(render_mode=None, obs_type="ram"):
    """ALE/Pong-v5. Steps return the 128-byte RAM by default: play_episode reads ALE's palette-index
    screen itself, which skips the 26 us RGB conversion of every frame. obs_type="rgb" for RGB frames."""
    import ale_py
    import gymnasium
    gymnasium.register_envs(ale_py)
    return gymnasium.make(ENV_ID, render_mode=render_mode, obs_type=obs_type)


COLORS = new_color_table()    # palette index -> paddle/ball or background; the same for every Pong env


def env_seed(*keys):
    """A 32-bit env seed derived from (seed, worker, ...): independent streams per worker."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@dataclass
class Episode:
    indptr: np.ndarray        # (T+1,) int32: step t's pixels are idx[indptr[t]:indptr[t+1]]
    idx: np.ndarray           # (nnz,) int16 flat pixel indices of the difference frames
    vals: np.ndarray          # (nnz,) int8 their values, +1 or -1
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


def play_episode(env, weights, rng, greedy=False, on_step=None, max_steps=None):
    """Play one episode with the policy weights {"W1T": W1.T contiguous, "W2"}; return it as an Episode.

    Actions are sampled from P(UP) unless greedy (UP when P(UP) > 0.5). on_step(frame, episode_so_far)
    is called with every RGB frame, for recording. max_steps cuts the game short."""
    env.reset()
    ale = env.unwrapped.ale
    screen = np.empty((210, 160), np.uint8)
    pixels, previous = np.empty(D, np.uint8), np.empty(D, np.uint8)
    ale.getScreen(screen)                                       # palette indices, into our buffer
    screen_pixels(screen, previous)                             # the first step's difference is zero
    learn_colors(COLORS, previous, screen, ale.getScreenRGB)
    idx_parts, on_parts, ups, rewards = [], [], [], []
    while True:
        if on_step is not None:
            on_step(ale.getScreenRGB(), rewards)
        ale.getScreen(screen)
        screen_pixels(screen, pixels)
        idx, turned_on = screen_difference(pixels, previous, COLORS, screen, ale.getScreenRGB)
        pixels, previous = previous, pixels
        p_up = forward_sparse(weights["W1T"], weights["W2"], idx, difference_values(turned_on))
        up = p_up > 0.5 if greedy else rng.random() < p_up     # sample the action
        _, reward, terminated, truncated, _ = env.step(UP if up else DOWN)
        idx_parts.append(idx); on_parts.append(turned_on)
        ups.append(up); rewards.append(reward)
        if terminated or truncated or len(ups) == max_steps:
            break
    counts = [len(i) for i in idx_parts]
    return Episode(indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
                   idx=np.concatenate(idx_parts).astype(np.int16),
                   vals=np.concatenate(on_parts).view(np.int8) * np.int8(2) - np.int8(1),  # +1 / -1
                   up=np.array(ups, np.uint8), rewards=np.array(rewards, np.int8))


def task_rng(seed, task):
    """The random numbers of one task (episode) depend only on the run's seed and the task's number."""
    return np.random.default_rng([seed, task])


def _worker(conn, seed, worker_id, first_task, render):
    """Worker process: receive (task, weights or None, greedy), play that episode, send it back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the learner decides how to stop on Ctrl-C
    env = make_env(render_mode="human" if render else None)
    env.reset(seed=env_seed(seed, worker_id, first_task))
    weights = None
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            task, new_weights, greedy = message
            weights = new_weights if new_weights is not None else weights
            episode = play_episode(env, weights, task_rng(seed, task), greedy=greedy)
            conn.send(episode)
    except (EOFError, BrokenPipeError):
        return                                       # the learner is gone: so are we


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """N worker processes, each playing one episode at a time with the weights the learner sends."""

    def __init__(self, n_workers, seed, first_task, render_first=False):
        """render_first: worker 0 shows its games in a window (at the game's real speed)."""
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for worker_id in range(n_workers):
            ours, theirs = ctx.Pipe()
            render = render_first and worker_id == 0
            proc = ctx.Process(target=_worker, args=(theirs, seed, worker_id, first_task, render), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
        self.busy = set()

    def __len__(self):
        return len(self.conns)

    def assign(self, worker, task, weights=None, greedy=False):
        """Worker plays task next; weights=None keeps the weights it has."""
        self.conns[worker].send((task, weights, greedy))
        self.busy.add(worker)

    def next_result(self, timeout):
        """(worker, Episode) for an episode that finished, or None after timeout seconds."""
        ready = wait([self.conns[w] for w in self.busy] + [self.procs[w].sentinel for w in self.busy],
                     timeout)
        for worker in sorted(self.busy):
            if self.conns[worker] in ready:
                try:
                    episode = self.conns[worker].recv()
                except (EOFError, OSError):
                    break
                self.busy.discard(worker)
                return worker, episode
        for worker in self.busy:
            if not self.procs[worker].is_alive():
                raise WorkerError(f"worker {worker} died (exit code {self.procs[worker].exitcode}) "
                                  "while playing an episode")
        return None

    def close(self):
        """Stop every worker; an episode still being played is dropped (it was never counted)."""
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()

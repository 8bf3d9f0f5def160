"""Worker processes that play episodes on every core, and the Pong environment they play in.

The pool is told which function plays an episode (pong_pg.play_episode), so that this module needs
nothing from the script that uses it. Each worker keeps the weights it was last sent; the learner
sends new ones only after an update, and then, where it can, only what the update changed (a patch).
"""
import multiprocessing
import os
import pickle
import selectors
import signal
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np

ENV_ID = "ALE/Pong-v5"
# Signals a worker ignores: Ctrl-C and a closed terminal reach the whole process group, and the
# learner decides how to stop (it saves, then ends the workers). Ignored before a worker starts, so
# that it is ignored while the worker still imports its modules too.
IGNORED_IN_WORKERS = [signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def make_env(render_mode=None, obs_type="ram", **rules):
    """ALE/Pong-v5: frameskip 4, sticky actions. obs_type="ram" by default: play_episode reads ALE's
    palette screen itself, so no RGB frame is built; obs_type="rgb" for the RGB frames; rules: other
    settings of the game (max_num_frames_per_episode=...)."""
    if render_mode == "human":
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")   # Pong plays no sound; no ALSA errors without a card
    import ale_py
    import gymnasium
    gymnasium.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)   # no start-up banner from every process
    return gymnasium.make(ENV_ID, render_mode=render_mode, obs_type=obs_type, **rules)


def game_step(env):
    """A function step(action) -> (reward, terminated, truncated) that plays one agent step of env
    (made by make_env) by the same rules as env.step, straight on its emulator: the action held for
    frameskip (4) frames, the frames' rewards summed, sticky actions applied inside the emulator as
    env.step has them applied, the same end of game and truncation. It builds nothing that env.step
    would build and play_episode never reads: the observation, the info dict, the wrappers' checks."""
    ale, frameskip = env.unwrapped.ale, env.spec.kwargs["frameskip"]
    actions = ale.getMinimalActionSet()             # env.step's action i is actions[i] (v5: minimal set)
    act, game_over, game_truncated = ale.act, ale.game_over, ale.game_truncated

    def step(action):
        emulator_action, reward = actions[action], 0
        for _ in range(frameskip):
            reward += act(emulator_action)
        return reward, game_over(with_truncation=False), game_truncated()
    return step


def env_seed(*keys):
    """A 32-bit env seed derived from (seed, worker, ...): independent streams per worker."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def task_rng(seed, task):
    """The random numbers of one task (episode) depend only on the run's seed and the task's number."""
    return np.random.default_rng([seed, task])


DIRECT_PIPES = os.name == "posix"    # a Connection's fileno() is a socket we may write and read ourselves


def send_arrays(conn, obj):
    """Send obj (weights, or what play_episode returned) with its arrays' data out of band: pickled
    without the data, which follows as raw bytes written straight from the arrays (POSIX; elsewhere
    as framed messages). Pickled whole, 5 MB of weights or a megabyte of gradient sums would be
    copied three more times on its way."""
    buffers = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    data = [buffer.raw() for buffer in buffers]                  # contiguous bytes: len() is the size
    conn.send((head, [len(d) for d in data]))
    for d in data:
        if DIRECT_PIPES:
            while d:
                d = d[os.write(conn.fileno(), d):]
        else:
            conn.send_bytes(d)


def receive_arrays(conn):
    """What send_arrays sent, its arrays' data read straight into one new buffer (no copy between)."""
    head, sizes = conn.recv()
    starts = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes])   # each array's data 64-byte aligned
    raw = np.empty(starts[-1] + 64, np.uint8)
    inbox = memoryview(raw[-raw.ctypes.data % 64:])               # from its first 64-byte aligned address
    views = [inbox[start:start + n] for start, n in zip(starts[:-1], sizes, strict=True)]
    for view in views:
        got = 0
        while got < len(view):
            n = os.readv(conn.fileno(), [view[got:]]) if DIRECT_PIPES else conn.recv_bytes_into(view[got:])
            if n == 0:
                raise EOFError
            got += n
    return pickle.loads(head, buffers=views)


def _worker(conn, play_episode, seed, worker_id, first_task, render):
    """Worker process: receive (task, greedy, whether new weights follow), then the new weights if
    any, play that episode, send its result back."""
    for signum in IGNORED_IN_WORKERS:               # inherited as ignored on POSIX; Windows needs it here
        signal.signal(signum, signal.SIG_IGN)
    env = make_env(render_mode="human" if render else None)
    env.reset(seed=env_seed(seed, worker_id, first_task))
    weights = None
    try:
        conn.send("ready")                           # its modules are loaded: it can take weights at once
        while True:
            message = conn.recv()
            if message is None:
                return
            task, greedy, new_weights = message
            if new_weights == "all":
                weights = receive_arrays(conn)
            elif new_weights == "patch":
                apply_patch(weights, receive_arrays(conn))
            send_arrays(conn, play_episode(env, weights, task_rng(seed, task), greedy=greedy))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return                                       # the learner is gone: so are we


def apply_patch(weights, patch):
    """Bring weights up to date with a patch (WeightsVersion.patch): its arrays in "in_rows"
    replace those rows of the weights of that name, the ones in "whole" replace them whole."""
    for name, values in patch["in_rows"].items():
        weights[name][patch["rows"]] = values
    for name, value in patch["whole"].items():
        weights[name] = value.copy()             # a view would keep the patch's whole buffer alive


class WorkerError(RuntimeError):
    pass


@dataclass
class WeightsVersion:
    """Weights to play with, numbered: a worker that holds this version already is not sent them again."""
    version: int
    weights: dict

    def patch(self, held):
        """What brings weights of version `held` to these, where that is smaller than all of them (the
        trainer's snapshots know what each update changed); None: send them all."""
        return None


class WorkerPool:
    """N worker processes, each playing one episode at a time with the weights the learner sends.
    A context manager: leaving it stops every worker."""

    def __init__(self, n_workers, play_episode, seed, first_task, render_first=False):
        """play_episode(env, weights, rng, greedy) plays one episode and returns what the worker sends
        back (an Episode, or in training its EpisodeSums); render_first: worker 0 shows its games in a
        window (at the game's real speed)."""
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs, self.busy, self.snapshots, self.selector = [], [], set(), {}, None
        # The workers must start with these signals ignored, which they inherit only from an ignoring
        # parent. So the learner ignores them while it spawns; it blocks them first where it can, so
        # that one arriving meanwhile waits and reaches the learner's handler after (not lost).
        can_block = hasattr(signal, "pthread_sigmask")              # POSIX; not on Windows
        if can_block:
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()    # started later, it would unblock SIGINT while we ignore it
            signal.pthread_sigmask(signal.SIG_BLOCK, IGNORED_IN_WORKERS)
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in IGNORED_IN_WORKERS}   # inherited
        try:
            for worker_id in range(n_workers):
                ours, theirs = ctx.Pipe()
                render = render_first and worker_id == 0
                proc = ctx.Process(target=_worker, args=(theirs, play_episode, seed, worker_id, first_task,
                                                         render), daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(ours)
                self.procs.append(proc)
            # POSIX: one selector on every pipe and process for the pool's life (connection.wait() makes
            # and fills a new one at each call: ~170 us of the learner's CPU, per episode and per timeout)
            self.selector = selectors.DefaultSelector() if DIRECT_PIPES else None
            for worker in range(n_workers) if self.selector else ():
                self.selector.register(self.conns[worker], selectors.EVENT_READ)
                self.selector.register(self.procs[worker].sentinel, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise
        finally:
            for s, handler in ignored.items():
                signal.signal(s, handler)
            if can_block:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, IGNORED_IN_WORKERS)

    def __len__(self):
        return len(self.conns)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_until_ready(self, stopped):
        """Wait until every worker has loaded its modules and made its game (a few seconds at start),
        checking stopped() as it waits; False if stopped first. A worker that dies raises WorkerError."""
        waiting = set(range(len(self)))
        while waiting:
            if stopped():
                return False
            ready = set(wait([self.conns[w] for w in waiting] + [self.procs[w].sentinel for w in waiting], 0.05))
            for worker in sorted(waiting):
                if self.conns[worker] in ready:
                    try:
                        self.conns[worker].recv()
                    except (EOFError, OSError):
                        raise WorkerError(self._death(worker)) from None
                    waiting.discard(worker)
                elif self.procs[worker].sentinel in ready:
                    raise WorkerError(self._death(worker))
        return True

    def idle(self):
        return [w for w in range(len(self)) if w not in self.busy]

    def start(self, worker, task, snapshot, greedy=False):
        """Worker plays task next with the weights of snapshot (a WeightsVersion): they are sent only if
        the worker does not have that version yet, and as a patch of the version it has where
        snapshot.patch gives one."""
        held = self.snapshots.get(worker)
        self.snapshots[worker] = snapshot
        if held is not None and held.version == snapshot.version:
            new, weights = None, None
        else:
            patch = snapshot.patch(held.version) if held is not None else None
            new, weights = ("all", snapshot.weights) if patch is None else ("patch", patch)
        try:
            self.conns[worker].send((task, greedy, new))
            if new:
                send_arrays(self.conns[worker], weights)
        except OSError:                              # its end of the pipe is closed: it died
            raise WorkerError(self._death(worker)) from None
        self.busy.add(worker)

    def next_result(self, timeout):
        """(worker, what play_episode returned, the weights snapshot it was played with) for an episode that
        finished, or None after timeout seconds."""
        if self.selector:
            ready = {key.fileobj for key, _ in self.selector.select(timeout)}
            for worker in set(range(len(self))) - self.busy:
                if self.procs[worker].sentinel in ready:    # died idle: it would wake every select
                    raise WorkerError(self._death(worker))
        else:
            ready = set(wait([self.conns[w] for w in self.busy] + [self.procs[w].sentinel for w in self.busy],
                             timeout))               # a set: one lookup per worker, not a scan of 2N
        for worker in sorted(self.busy):
            if self.conns[worker] in ready:
                try:
                    episode = receive_arrays(self.conns[worker])
                except (EOFError, OSError):
                    break
                self.busy.discard(worker)
                return worker, episode, self.snapshots[worker]
        for worker in self.busy:
            if not self.procs[worker].is_alive():
                raise WorkerError(self._death(worker))
        return None

    def _death(self, worker):
        self.procs[worker].join(timeout=1)
        return f"worker {worker} died (exit code {self.procs[worker].exitcode})"

    def close(self):
        """Stop every worker; an episode still being played is dropped (it was never counted)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self.selector:
            self.selector.close()
            self.selector = None
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

"""The book-keeping of a training run, behind one object both training loops are handed (Run): the
clock, the counters and the running mean, the per-episode log, what is printed, the checkpoints and
the pictures, the stop and why the run ended. Also what a checkpoint holds (TrainingState) and the
agent files that hold weights alone.
"""
import contextlib
import dataclasses
import errno
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import checkpoint
import watch
from checkpoint import CheckpointError
from pong_pg import RUNNING_MEAN_DECAY, Hyperparameters, decay_rate, entropy_weight, init_model, learning_rate
from preprocess import D
from stopping import Stop

CHECKPOINT_FILE = "pong_pg.pkl"
LOG_FILE = "log.csv"
LOG_COLUMNS = ["episode", "score", "running_mean", "steps", "total_steps", "update", "wall_seconds"]
PICTURES_EVERY = 300    # seconds between redrawing the pictures at a checkpoint (the learner waits meanwhile)
EXIT_LAST_CHECKPOINT_KEPT = 75   # the final save failed (sysexits' EX_TEMPFAIL: retry once the disk has room)


# ---------------------------------------------------------------- what a checkpoint holds

@dataclass
class TrainingState:
    """A run's state, as its checkpoint keeps it (a dict of these fields, hyper with the seed in it)."""
    hyper: Hyperparameters
    seed: int
    model: dict                       # {"W1": (H, 6400), "W2": (H,)}, float32 (float64 after --plain)
    cache: dict                       # RMSProp's running mean of g^2, the same shapes
    episode: int = 0
    total_steps: int = 0
    updates: int = 0
    next_task: int = 0                # the next episode's number: its random numbers derive from it
    running_mean: float | None = None
    wall_seconds: float = 0.0
    batch: dict | None = None         # the fast trainer's unfinished batch (BatchGradient.state())
    plain_batch: dict | None = None   # --plain's (pong_pg.kept_batch)
    warmup_from: int | None = None    # the update from which the learning rate warms up (learning_rate)
    late_from: int | None = None      # the update from which the late settings apply: the running mean had passed 0
    log_pending: list = field(default_factory=list)   # log rows the disk did not take yet
    init_from: str | None = None      # --init-from FILE, and the seed FILE's own training began from
    start_seed: int | None = None

    @classmethod
    def new(cls, hyper, seed):
        model = init_model(hyper.hidden, np.random.default_rng(seed))
        return cls(hyper, seed, model, {k: np.zeros_like(v) for k, v in model.items()})

    # -- the settings the next update uses (the late ones once the running mean has passed 0)
    def learning_rate(self):
        return learning_rate(self.hyper, self.updates, self.warmup_from, self.late_from is not None)

    def decay_rate(self):
        return decay_rate(self.hyper, self.late_from is not None)

    def entropy(self):
        return entropy_weight(self.hyper, self.late_from is not None)

    def to_checkpoint(self):
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        saved["hyper"] = dict(dataclasses.asdict(self.hyper), seed=saved.pop("seed"))
        if self.init_from is None:
            del saved["init_from"], saved["start_seed"]    # a run's own seed is where it began
        return saved

    @classmethod
    def from_checkpoint(cls, saved, path):
        """The state of a checkpoint's dict; CheckpointError unless it is whole and usable."""
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path} is not a pong_pg checkpoint")
        try:
            check_arrays(saved, ("model", "cache"), path)
            for k in ("episode", "total_steps", "updates", "next_task"):
                if not isinstance(saved[k], int) or saved[k] < 0:
                    raise CheckpointError(f"checkpoint {path} is damaged: bad {k}")
            hyper = dict(saved["hyper"])
            hyper.setdefault("standardize", "batch")     # checkpoints from before the 2016 preset
            hyper.setdefault("entropy", 0.0)             # and from before the entropy bonus
            hyper.setdefault("late_lr", None)            # and from before the late settings
            hyper.setdefault("late_decay_rate", None)
            hyper.setdefault("late_entropy", None)
            fields = {k: saved[k] for k in ("model", "cache", "episode", "total_steps", "updates", "next_task",
                                            "running_mean", "wall_seconds")}
            state = cls(Hyperparameters(**{f.name: hyper[f.name] for f in dataclasses.fields(Hyperparameters)}),
                        hyper["seed"], **fields, batch=saved.get("batch"), plain_batch=saved.get("plain_batch"),
                        warmup_from=saved.get("warmup_from"), late_from=saved.get("late_from"),
                        log_pending=saved.get("log_pending", []),
                        init_from=saved.get("init_from"), start_seed=saved.get("start_seed"))
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"checkpoint {path} is damaged: it lacks part of the training state") from None
        if not all(isinstance(row, str) for row in state.log_pending):
            raise CheckpointError(f"checkpoint {path} is damaged: bad log rows")
        for name in ("warmup_from", "late_from"):
            start = getattr(state, name)
            if start is not None and not (isinstance(start, int) and 0 <= start <= state.updates):
                raise CheckpointError(f"checkpoint {path} is damaged: bad {name}")
        if not (sums_fit(state.batch, state.hyper.hidden) and episodes_decode(state.plain_batch)):
            raise CheckpointError(f"checkpoint {path} is damaged: its unfinished batch does not decode")
        return state


def run_paths(directory):
    """{"checkpoint": its file, "log": its file} of the run in directory."""
    return {"checkpoint": os.path.join(directory, CHECKPOINT_FILE), "log": os.path.join(directory, LOG_FILE)}


def load_state(path):
    """The training state of a checkpoint file; CheckpointError unless it is whole and usable."""
    return TrainingState.from_checkpoint(checkpoint.load(path), path)


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


def sums_fit(kept, hidden):
    """Whether the fast trainer's unfinished batch (BatchGradient.state(); None: none) fits the network."""
    if kept is None:
        return True
    try:
        sums = np.shape(kept["sums_W2"])[0]
        pixels = np.asarray(kept.get("pixels", np.arange(D)))
        return (sums in (2, 3) and np.shape(kept["sums_W2"]) == (sums, hidden)
                and np.shape(kept["sums_W1T"]) == (len(pixels), sums * hidden) and np.all((pixels >= 0) & (pixels < D))
                and all(np.isscalar(kept[k]) for k in ("sum_R", "sum_R2", "steps", "episodes")))
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def episodes_decode(kept_episodes):
    """Whether --plain's unfinished batch (pong_pg.kept_batch; None: none) is whole: each step's
    pixels in range."""
    try:
        for i in range(len(kept_episodes or {})):
            e = kept_episodes[str(i)]
            if not (len(e["indptr"]) == len(e["up"]) + 1 == len(e["rewards"]) + 1
                    and e["indptr"][-1] == len(e["idx"]) == len(e["vals"]) and np.all(np.diff(e["indptr"]) >= 0)
                    and np.all((e["idx"] >= 0) & (e["idx"] < D))):
                return False
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return True


# ---------------------------------------------------------------- agent files: weights alone

def load_agent(path):
    """The weights of a training checkpoint or of an agent file (weights only, like the shipped one),
    as a dict ("model", and "hyper", "episode", ... where the file has them)."""
    agent = checkpoint.load(path)
    try:
        check_arrays(agent, ("model",), path)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: it holds no policy weights") from None
    return agent


def start_seed(agent):
    """The seed of the random weights that an agent's training began from, carried on through --init-from
    and --export: a run's own seed, or the start_seed of the agent it was initialised from. None where it
    is unknown (a 2016 save.p, an agent file that predates start_seed) or damaged."""
    if "start_seed" in agent:
        seed = agent["start_seed"]
    else:
        seed = None if agent.get("init_from") else agent.get("hyper", {}).get("seed")
    return seed if type(seed) is int and seed >= 0 else None


def initial_W1(agent):
    """The random W1 the agent's training began from, which its start seed regenerates exactly (None
    where that seed is unknown)."""
    seed = start_seed(agent)
    if seed is None:
        return None
    return init_model(agent["model"]["W1"].shape[0], np.random.default_rng(seed))["W1"]


# ---------------------------------------------------------------- the run

class Run:
    """The book-keeping of one training run, which the training loops are handed: pong_pg.train_plain
    and pong_pg_fast.train call it where the 2016 script does its book-keeping. A context manager
    (the log stays open while training)."""

    def __init__(self, state, directory, save_every, quiet=False, episodes=None):
        """episodes: stop after this many more (None: until stopped)."""
        self.state, self.save_every, self.quiet = state, save_every, quiet
        self.paths = run_paths(directory)
        self.first_episode = state.episode
        self.last_episode = state.episode + episodes if episodes else None
        self.clock = Clock(state.wall_seconds)
        self.saves = Saves(self.paths, state.episode)
        self.ended = None                         # a WorkerError, if one ended the run
        self.last_pictures = None
        self.window_start, self.window_steps = time.time(), 0    # for the per-update report

    def __enter__(self):
        self.log = EpisodeLog(self.paths["log"], self.state.log_pending)
        return self

    def __exit__(self, *exc):
        self.log.close()

    # -- what the loops read
    @property
    def hyper(self):
        return self.state.hyper

    @property
    def seed(self):
        return self.state.seed

    @property
    def updates(self):
        return self.state.updates

    @property
    def next_task(self):
        return self.state.next_task

    def weights(self, dtype, layout=None):
        """The model and its RMSProp cache, converted for a loop (in the state too, which saves them):
        to dtype, and W1 to layout(W1) (pong_pg_fast.pixel_major) where given."""
        if self.state.model["W1"].dtype == np.float64 and dtype != np.float64:
            print("note: the checkpoint's weights are float64 (a --plain run): training goes on in float32")
        for part in (self.state.model, self.state.cache):
            for k in part:
                part[k] = (layout(part[k]) if layout and k == "W1" else part[k]).astype(dtype)
        return self.state.model, self.state.cache

    def unfinished_batch(self, trainer):
        """The unfinished batch the checkpoint kept, if `trainer` ("plain" or "fast") kept it (None
        otherwise: a batch of the other trainer starts afresh, with a note)."""
        mine, other = ("plain_batch", "batch") if trainer == "plain" else ("batch", "plain_batch")
        kept, theirs = getattr(self.state, mine), getattr(self.state, other)
        self.state.batch = self.state.plain_batch = None
        if theirs:
            episodes = theirs["episodes"] if other == "batch" else len(theirs)
            print(f"note: the unfinished batch ({episodes} episode(s)) was kept by the other trainer "
                  f"({'--plain' if other == 'plain_batch' else 'without --plain'}): it starts afresh; its "
                  f"episodes are in the log")
        return kept

    def learning_rate(self):
        return self.state.learning_rate()

    def decay_rate(self):
        return self.state.decay_rate()

    def entropy(self):
        return self.state.entropy()

    def stopped(self):
        """Whether a stop signal has arrived (Ctrl-C, SIGTERM, SIGHUP: the loops check between episodes)."""
        return Stop.arrived()

    def wants_another_episode(self, in_play=0):
        """Whether to play another episode: not stopped, and --episodes (counting those in play) not reached."""
        return not self.stopped() and (self.last_episode is None or self.state.episode + in_play < self.last_episode)

    def new_task(self):
        """The next episode's number."""
        self.state.next_task += 1
        return self.state.next_task - 1

    # -- what the loops report
    def begin(self, how):
        h = self.hyper
        print(f"training {how}, from episode {self.state.episode + 1}; lr {h.lr}, batch {h.batch_size}, "
              f"gamma {h.gamma}, decay {h.decay_rate}, returns standardized per {h.standardize}, "
              f"{h.hidden} hidden units, seed {self.seed}" + (f", entropy bonus {h.entropy}" if h.entropy else "")
              + self.late_settings())
        self.window_start = time.time()

    def late_settings(self):
        """What changes once the running mean has passed 0, as the start line says it ("" for nothing)."""
        h, late = self.hyper, []
        if h.late_lr is not None:
            late.append(f"lr {h.late_lr}")
        if h.late_decay_rate is not None:
            late.append(f"decay {h.late_decay_rate}")
        if h.late_entropy is not None:
            late.append(f"entropy bonus {h.late_entropy}")
        if not late:
            return ""
        when = (f"since update {self.state.late_from + 1}" if self.state.late_from is not None
                else "once the running mean passes 0")
        return f"; {when}: {', '.join(late)}"

    def episode_done(self, episode):
        """Count an episode (anything with .steps and .score), log it, print it; the first time the
        running mean passes 0, the late settings apply from the next update on."""
        s = self.state
        s.episode += 1
        s.total_steps += episode.steps
        s.running_mean = episode.score if s.running_mean is None else (
            RUNNING_MEAN_DECAY * s.running_mean + (1 - RUNNING_MEAN_DECAY) * episode.score)
        if s.late_from is None and s.running_mean > 0:
            s.late_from = s.updates
            if self.late_settings():
                print(f"the running mean passed 0 at episode {s.episode}{self.late_settings()}")
        self.window_steps += episode.steps
        self.log.append(f"{s.episode},{episode.score},{s.running_mean:.4f},{episode.steps},{s.total_steps},"
                        f"{s.updates},{self.clock.seconds():.1f}\n")
        if not self.quiet:
            print(f"episode {s.episode}: score {episode.score:+d}, running mean {s.running_mean:+.2f}, "
                  f"{episode.steps} steps, {self.clock}")

    def update_done(self, steps, episodes, lag=None):
        """Count an update of `steps` agent steps in `episodes` episodes (with workers, the oldest weights
        among them `lag` updates old), print it, and save every save_every episodes (pictures at most
        every PICTURES_EVERY seconds)."""
        s = self.state
        s.updates += 1
        rate = self.window_steps / max(time.time() - self.window_start, 1e-9)
        old = "" if lag is None else f"weights up to {lag} update(s) old, "
        print(f"update {s.updates}: {steps} steps in {episodes} episodes, {rate:,.0f} steps/s, running mean "
              f"{s.running_mean:+.2f}, {old}total {s.total_steps:,} steps, {self.clock}")
        self.window_start, self.window_steps = time.time(), 0
        if s.episode - self.saves.episode >= self.save_every:
            self.log.sync()
            pictures = self.last_pictures is None or time.time() - self.last_pictures >= PICTURES_EVERY
            s.batch = s.plain_batch = None                 # the batch was just used up
            if self.saves.save(s, self.clock, f"every {self.save_every} episodes", pictures) and pictures:
                self.last_pictures = time.time()

    def worker_failed(self, error):
        self.ended = error

    def finish(self, unfinished):
        """The final save, with the loop's unfinished batch ({"batch": ...} or {"plain_batch": ...}).
        Returns the exit code: 0 done, 128 + the signal's number when stopped, 1 after a worker failed,
        EXIT_LAST_CHECKPOINT_KEPT when the save failed."""
        self.state.batch, self.state.plain_batch = unfinished.get("batch"), unfinished.get("plain_batch")
        if self.ended is not None:
            print(f"pong_pg: error: {self.ended}", file=sys.stderr)
            reason, code = "after a worker failed", 1
        elif Stop.arrived():
            reason, code = f"stopped by {signal.Signals(Stop.signum).name}", 128 + Stop.signum
        else:
            reason, code = "done", 0
        played = self.state.episode > self.first_episode      # else the pictures would show nothing new
        self.log.sync()
        if not self.saves.save(self.state, self.clock, reason, played):
            print(f"pong_pg: error: {self.saves.final_failure(self.state)}", file=sys.stderr)
            return EXIT_LAST_CHECKPOINT_KEPT
        return code


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
        self.failed, self.error = 0, None          # saves failed in a row, and why

    def save(self, state, clock, reason, pictures=True):
        """Write the checkpoint and, if asked, redraw the pictures. Returns whether it was written."""
        state.wall_seconds = clock.seconds()
        try:
            checkpoint.save(self.paths["checkpoint"], state.to_checkpoint())
        except OSError as e:
            self.error = e.strerror or str(e)
            if not self.failed:
                print(f"warning: could not save the checkpoint ({self.error}); {self.paths['checkpoint']} "
                      f"still holds episode {self.episode}; training goes on and saves as soon as the disk "
                      f"takes it", file=sys.stderr)
            self.failed += 1
            return False
        had_failed = f"; {self.failed} save(s) had failed" if self.failed else ""
        self.episode, self.failed = state.episode, 0
        print(f"saved {self.paths['checkpoint']} at episode {state.episode} ({reason}{had_failed})")
        if pictures:
            try:
                watch.draw_pictures(os.path.dirname(self.paths["checkpoint"]) or ".", state.model["W1"],
                                    self.paths["log"], initial_W1(state.to_checkpoint()),
                                    moment=(state.episode, state.running_mean))
            except Exception as e:  # noqa: BLE001 (the pictures are a convenience: report, train on)
                print(f"note: could not draw the pictures ({e})", file=sys.stderr)
        return True

    def final_failure(self, state):
        """The one line for a stop whose final save failed: why, what is kept, what is lost, what to do."""
        lost = state.episode - self.episode
        return (f"the final checkpoint could not be saved ({self.error}): {self.paths['checkpoint']} holds "
                f"episode {self.episode}, the {lost} episode(s) since are lost; once the disk has room, "
                f"python pong_pg.py --resume continues from episode {self.episode}")


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
    next row that fits: the log never holds a torn row, and never loses one."""

    def __init__(self, path, pending):
        self.path, self.pending, self.failing = path, pending, False
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size == 0:
            self.pending.insert(0, ",".join(LOG_COLUMNS) + "\n")
        self.write_pending()

    def append(self, row):
        self.pending.append(row)
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

    def close(self):
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        os.close(self.fd)

"""pong_pg: learn Atari Pong from pixels with policy gradients (REINFORCE), in numpy.

    python pong_pg.py              train until stopped; Ctrl-C saves a checkpoint and exits
    python pong_pg.py --resume     continue from the checkpoint in checkpoints/

A 2-layer network (6400 -> 200 ReLU -> sigmoid P(UP)) reads 80x80 difference frames. Worker
processes play episodes on every core; this process turns every batch of 10 episodes into one
RMSProp step on the REINFORCE gradient, with discounted returns standardized over the batch.
"""
import argparse
import csv
import os
import signal
import sys
import time

# One BLAS thread per process: the worker processes already keep every core busy, and BLAS threads
# spinning beside them cost a third of the throughput (measured). Must be set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import checkpoint  # noqa: E402
import plots  # noqa: E402
import watch  # noqa: E402
from checkpoint import CheckpointError  # noqa: E402
from policy import BatchGradient, init_model, rmsprop_step  # noqa: E402
from preprocess import D  # noqa: E402
from rollout import WorkerError, WorkerPool  # noqa: E402

# Hyperparameters (the card's values; each is a flag)
HIDDEN = 200            # hidden units
BATCH_SIZE = 10         # episodes per parameter update
LEARNING_RATE = 1e-3    # RMSProp step size
GAMMA = 0.99            # reward discount
DECAY_RATE = 0.9        # RMSProp decay of the squared-gradient average (2016: 0.99; 0.9 never stalled, README)
EPSILON = 1e-5          # RMSProp: avoids division by zero
SAVE_EVERY = 100        # episodes between checkpoints
PICTURES_EVERY = 300    # seconds between redrawing the pictures at a checkpoint (a drawing takes ~0.7 s)
RUNNING_MEAN_DECAY = 0.99   # the running mean score: 0.99 * old + 0.01 * episode score

CHECKPOINT_FILE = "pong_pg.pkl"
LOG_FILE = "log.csv"
SHIPPED_AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "pretrained.pkl")
LOG_COLUMNS = ["episode", "score", "running_mean", "steps", "total_steps", "update", "wall_seconds"]
HYPER_FLAGS = {"hidden": HIDDEN, "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "gamma": GAMMA,
               "decay_rate": DECAY_RATE}


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


def parse_args(argv=None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(
        description="Train a numpy policy network to play Pong from pixels (REINFORCE + RMSProp).",
        epilog="Hyperparameters left unset take the card's values on a new run and the checkpoint's "
               "values on --resume.")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where checkpoints and the log live "
                   "(default: %(default)s)")
    p.add_argument("--episodes", type=positive_int, help="stop after this many more episodes, save and "
                   "exit (default: run until stopped)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=cores,
                   help="processes playing episodes (default: the cores available, here %(default)s)")
    p.add_argument("--save-every", type=positive_int, default=SAVE_EVERY,
                   help="episodes between checkpoints (default: %(default)s)")
    p.add_argument("--hidden", type=positive_int, help=f"hidden units (default: {HIDDEN})")
    p.add_argument("--batch-size", type=positive_int, help=f"episodes per update (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=positive_float, help=f"learning rate (default: {LEARNING_RATE})")
    p.add_argument("--gamma", type=unit_interval, help=f"reward discount (default: {GAMMA})")
    p.add_argument("--decay-rate", type=decay_interval, help=f"RMSProp decay (default: {DECAY_RATE})")
    p.add_argument("--quiet", action="store_true", help="print only the per-update summaries")
    p.add_argument("--render", action="store_true", help="while training, show one worker's games in a "
                   "window (the others keep training at full speed)")
    watch = p.add_argument_group("watching a trained agent (the latest checkpoint in --checkpoint-dir, "
                                 "else the shipped agent)")
    watch.add_argument("--play", action="store_true", help="show the agent playing in a window")
    watch.add_argument("--record", metavar="FILE", help="write a video of one game (.mp4 or .gif); "
                       "needs no display")
    watch.add_argument("--eval", type=positive_int, metavar="N", help="play N games with the sampled and N "
                       "with the greedy policy, no learning, and print the statistics")
    watch.add_argument("--plot", action="store_true", help="write the learning-curve and weights PNGs "
                       "into --checkpoint-dir")
    watch.add_argument("--export", metavar="FILE", help="write the agent's weights alone (5 MB) to FILE, "
                       "to share it or watch it with --checkpoint FILE")
    watch.add_argument("--checkpoint", metavar="FILE", help="the agent to watch")
    watch.add_argument("--greedy", action="store_true", help="--play / --record: always take the more "
                       "likely action instead of sampling")
    watch.add_argument("--max-steps", type=positive_int, metavar="N", help="--play / --record: end each "
                       "game after N steps")
    args = p.parse_args(argv)
    modes = [flag for flag, on in (("--play", args.play), ("--eval", args.eval), ("--plot", args.plot),
                                   ("--record", args.record), ("--export", args.export)) if on]
    if len(modes) > 1 and modes != ["--play", "--record"]:
        p.error(f"{' and '.join(modes)} cannot be combined")
    if modes and (args.resume or args.render):
        p.error(f"{modes[0]} watches an agent; --resume and --render are for training")
    if args.record and not args.record.lower().endswith((".mp4", ".gif")):
        p.error(f"--record {args.record}: the file name must end in .mp4 or .gif")
    args.watching = bool(modes)
    return args


def fail(message, code=1):
    print(f"pong_pg: error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- training state

def new_state(hyper, seed):
    model = init_model(hyper["hidden"], np.random.default_rng(seed))
    return {"hyper": dict(hyper, seed=seed), "model": model,
            "cache": {k: np.zeros_like(v) for k, v in model.items()},   # RMSProp's running mean of g^2
            "episode": 0, "total_steps": 0, "updates": 0, "next_task": 0,
            "running_mean": None, "wall_seconds": 0.0, "batch": None}


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


def check_state(state, path):
    """Raise CheckpointError unless state is a usable training state."""
    try:
        check_arrays(state, ("model", "cache"), path)
        for k in ("episode", "total_steps", "updates", "next_task"):
            if not isinstance(state[k], int) or state[k] < 0:
                raise CheckpointError(f"checkpoint {path} is damaged: bad {k}")
        for k in HYPER_FLAGS:
            state["hyper"][k]
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: it lacks part of the training state") from None


def load_state(path):
    state = checkpoint.load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pong_pg checkpoint")
    check_state(state, path)
    return state


def load_agent(path):
    """The weights of a training checkpoint or of an agent file (weights only, like the shipped one)."""
    state = checkpoint.load(path)
    try:
        check_arrays(state, ("model",), path)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} is damaged: it holds no policy weights") from None
    return state


def choose_hyperparameters(args, state):
    """Flags given now win; unset flags take the checkpoint's values (or the card's on a new run)."""
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


# ---------------------------------------------------------------- the per-episode CSV log

def trim_log(path, last_episode):
    """Keep the header and the rows of episodes 1..last_episode: rows written after the checkpoint
    was saved (those episodes will be played again) and a torn last line are dropped."""
    if not os.path.exists(path):
        return
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
        with open(tmp, "w", newline="") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def open_log(path):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    log = open(path, "a", newline="")
    writer = csv.writer(log, lineterminator="\n")
    if new:
        writer.writerow(LOG_COLUMNS)
    return log, writer


# ---------------------------------------------------------------- training

def snapshot(model):
    """The weights that workers play with, while the learner keeps updating model. W1 is kept
    transposed: a pixel's weights are then contiguous, which the sparse forward pass reads."""
    return {"W1T": np.ascontiguousarray(model["W1"].T), "W2": model["W2"].copy()}


def clock(seconds):
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Stop:
    """Set by SIGINT / SIGTERM; the training loop checks it between episodes."""
    signal = None

    @classmethod
    def handler(cls, signum, frame):
        cls.signal = signum


def refresh_plots(paths, W1):
    """Redraw the learning curve and the weights next to the checkpoint; a failure never stops training."""
    try:
        plots.refresh(os.path.dirname(paths["checkpoint"]) or ".", W1, paths["log"])
    except Exception as e:       # noqa: BLE001 (pictures are a convenience: report and go on)
        print(f"note: could not draw the plots ({e})", file=sys.stderr)


def train(args, state, paths):
    hyper = state["hyper"]
    model, cache = state["model"], state["cache"]
    batch = BatchGradient.from_state(state["batch"]) if state["batch"] else BatchGradient(hyper["hidden"])
    target = state["episode"] + args.episodes if args.episodes else None
    session_start, wall_before = time.time(), state["wall_seconds"]
    last_save, last_pictures = state["episode"], 0.0     # pictures: at the first checkpoint, then every 5 min
    update_start, update_steps, batch_lag = time.time(), 0, 0

    def save(reason, pictures=True):
        state["wall_seconds"] = wall_before + time.time() - session_start
        state["batch"] = batch.state() if batch.episodes else None
        try:
            checkpoint.save(paths["checkpoint"], state)
        except OSError as e:
            print(f"warning: could not save the checkpoint ({e.strerror or e}); the previous one is "
                  f"intact, trying again at the next save", file=sys.stderr)
            return False
        print(f"saved {paths['checkpoint']} at episode {state['episode']} ({reason})")
        if pictures:
            refresh_plots(paths, model["W1"])
        return True

    log, writer = open_log(paths["log"])
    pool = WorkerPool(args.workers, hyper["seed"], state["next_task"], render_first=args.render)
    played_with = {}            # worker -> (update number, weights) it is playing with
    weights = (state["updates"], snapshot(model))

    def assign(worker):
        """Give worker the next task, with the newest weights if it does not have them yet."""
        fresh = played_with.get(worker, (None,))[0] != weights[0]
        played_with[worker] = weights
        pool.assign(worker, state["next_task"], weights[1] if fresh else None)
        state["next_task"] += 1

    def wanted():
        return target is None or state["episode"] + len(pool.busy) < target

    print(f"training with {args.workers} worker(s), from episode {state['episode'] + 1}; "
          f"lr {hyper['lr']}, batch {hyper['batch_size']}, gamma {hyper['gamma']}, "
          f"decay {hyper['decay_rate']}, {hyper['hidden']} hidden units, seed {hyper['seed']}")
    try:
        for worker in range(len(pool)):
            if wanted():
                assign(worker)
        while pool.busy and Stop.signal is None:
            result = pool.next_result(timeout=0.2)
            if result is None:
                continue
            worker, episode = result
            state["episode"] += 1
            state["total_steps"] += episode.steps
            version, played = played_with[worker]
            completes_batch = batch.episodes + 1 >= hyper["batch_size"]
            if not completes_batch and wanted():
                assign(worker)          # keep the worker busy while we take in its episode
            batch.add_episode(played, episode.frames, episode.up, episode.rewards, hyper["gamma"])
            batch_lag = max(batch_lag, state["updates"] - version)   # updates since its weights were sent
            score = episode.score
            update_steps += episode.steps
            previous = state["running_mean"]
            state["running_mean"] = score if previous is None else (
                RUNNING_MEAN_DECAY * previous + (1 - RUNNING_MEAN_DECAY) * score)
            wall = wall_before + time.time() - session_start
            writer.writerow([state["episode"], score, f"{state['running_mean']:.4f}", episode.steps,
                             state["total_steps"], state["updates"], f"{wall:.1f}"])
            log.flush()
            if not args.quiet:
                print(f"episode {state['episode']}: score {score:+d}, running mean "
                      f"{state['running_mean']:+.2f}, {episode.steps} steps, {clock(wall)}")

            if batch.episodes >= hyper["batch_size"]:   # (>=: --batch-size may shrink on resume)
                grad = batch.gradient()
                if not all(np.all(np.isfinite(g)) for g in grad.values()):
                    raise FloatingPointError("the gradient is not finite")
                rmsprop_step(model, cache, grad, hyper["lr"], hyper["decay_rate"], EPSILON)
                if not all(np.all(np.isfinite(a)) for a in [*model.values(), *cache.values()]):
                    raise FloatingPointError("the weights or the RMSProp cache are not finite")
                state["updates"] += 1
                now = time.time()
                print(f"update {state['updates']}: {batch.steps} steps in {batch.episodes} episodes, "
                      f"{update_steps / max(now - update_start, 1e-9):,.0f} steps/s, running mean "
                      f"{state['running_mean']:+.2f}, weights up to {batch_lag} update(s) old, "
                      f"total {state['total_steps']:,} steps, {clock(wall)}")
                update_start, update_steps, batch_lag = now, 0, 0
                batch.reset()
                weights = (state["updates"], snapshot(model))
                if wanted():
                    assign(worker)      # with the new weights, before the slower save
                if state["episode"] - last_save >= args.save_every:
                    pictures = time.time() - last_pictures >= PICTURES_EVERY  # the workers wait while we draw
                    if save(f"every {args.save_every} episodes", pictures):
                        last_save = state["episode"]
                        if pictures:
                            last_pictures = time.time()
    except FloatingPointError as e:
        pool.close()
        log.close()
        fail(f"training diverged: {e}; stopped without saving, the last checkpoint is kept")
    except WorkerError as e:
        pool.close()
        print(f"pong_pg: error: {e}", file=sys.stderr)
        save("after a worker failed")
        log.close()
        sys.exit(1)
    pool.close()
    log.close()
    if Stop.signal is not None:
        name = signal.Signals(Stop.signal).name
        saved = save(f"stopped by {name}")
        sys.exit(128 + Stop.signal if saved else 1)
    if not save("done"):
        fail("the final checkpoint could not be saved")


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
    """--play, --record, --eval, --plot."""
    path = find_agent(args)
    try:
        state = load_agent(path)
    except CheckpointError as e:
        hint = "" if os.path.exists(path) else " (train first: python pong_pg.py)"
        fail(f"{e}{hint}")
    weights = snapshot(state["model"])
    print(f"agent {path}: trained for {state.get('episode', '?')} episodes, "
          f"running mean {state.get('running_mean') or 0:+.2f}")
    if args.export:
        agent = {k: state[k] for k in ("hyper", "model", "episode", "total_steps", "running_mean") if k in state}
        try:
            checkpoint.save(args.export, agent)
        except OSError as e:
            fail(f"cannot write {args.export}: {e.strerror or e}")
        print(f"wrote {args.export}")
    elif args.plot:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        try:
            written = plots.refresh(args.checkpoint_dir, state["model"]["W1"],
                                    os.path.join(args.checkpoint_dir, LOG_FILE))
        except ImportError as e:
            fail(e)
        for picture in written:
            print(f"wrote {picture}")
    elif args.eval:
        print(f"evaluating over {args.eval} games per policy on {args.workers} worker(s)")
        watch.print_evaluation(watch.evaluate(weights, args.eval, args.seed, args.workers))
    elif args.record:
        try:
            watch.record(weights, args.record, args.seed, args.greedy, args.max_steps)
        except watch.MissingDependency as e:
            fail(e)
    else:
        need_display("--play")
        watch.play(weights, args.episodes, args.seed, args.greedy, args.max_steps)


def need_display(flag):
    """On Linux an SDL window needs an X11 or Wayland display; without one it would silently show nothing."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        fail(f"{flag} needs a display and none is set (DISPLAY): use --record agent.mp4 instead, or run "
             f"under a virtual display: xvfb-run python pong_pg.py {flag}")


def main(argv=None):
    args = parse_args(argv)
    if args.watching:
        signal.signal(signal.SIGINT, lambda *_: sys.exit(130))    # Ctrl-C ends watching quietly
        return watch_agent(args)
    try:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --checkpoint-dir {args.checkpoint_dir}: {e.strerror or e}")
    paths = {"checkpoint": os.path.join(args.checkpoint_dir, CHECKPOINT_FILE),
             "log": os.path.join(args.checkpoint_dir, LOG_FILE)}
    if args.render:
        need_display("--render")
    if args.resume:
        try:
            state = load_state(paths["checkpoint"])
        except CheckpointError as e:
            fail(e)
        state["hyper"].update(choose_hyperparameters(args, state))
        trim_log(paths["log"], state["episode"])
    else:
        for what in ("checkpoint", "log"):
            if os.path.exists(paths[what]):
                fail(f"{paths[what]} already exists: add --resume to continue that run, or choose "
                     f"another --checkpoint-dir", code=2)
        state = new_state(choose_hyperparameters(args, None), args.seed)
        try:
            checkpoint.save(paths["checkpoint"], state)   # from now on, --resume always has a start
        except OSError as e:
            fail(f"cannot write to {args.checkpoint_dir}: {e.strerror or e}")
    checkpoint.remove_temporaries(args.checkpoint_dir)
    Stop.signal = None
    signal.signal(signal.SIGINT, Stop.handler)
    signal.signal(signal.SIGTERM, Stop.handler)
    train(args, state, paths)


if __name__ == "__main__":
    main()

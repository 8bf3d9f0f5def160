"""The command line of `python pong_pg.py`: the flags, starting or resuming a run and handing it to
a training loop (pong_pg.train_plain or pong_pg_fast.train), and watching an agent (--play, --record,
--eval, --plot, --export)."""
import argparse
import dataclasses
import os
import signal
import sys

import numpy as np

import checkpoint
import watch
from checkpoint import CheckpointError
from pong_pg import PRESETS, Hyperparameters, train_plain
from pong_pg_fast import play_episode, play_weights, policy_forward_sparse, train
from stopping import Stop
from training_run import (
    Run,
    TrainingState,
    check_arrays,
    initial_W1,
    load_agent,
    load_state,
    log_row_episode,
    run_paths,
    start_seed,
    trim_log,
)

SHIPPED_AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "pretrained.pkl")
SAVE_EVERY = 100        # episodes between checkpoints


# ---------------------------------------------------------------- the flags

def number(kind, valid, must_be):
    """An argparse type: text -> kind, refused unless valid(value) (the message: "it must be must_be")."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text} is invalid: it must be {must_be}")
        return value
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = number(int, lambda v: v >= 0, "an integer >= 0")


def available_cores():
    """The cores this process may run on (sched_getaffinity, where the OS has it), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_hyperparameters(p):
    """One flag per field of pong_pg.Hyperparameters, with its default and help (standardize: --preset)."""
    group = p.add_argument_group("hyperparameters (a new run: the defaults; --resume: the checkpoint's, "
                                 "which a flag given changes)")
    for f in dataclasses.fields(Hyperparameters):
        if "help" in f.metadata:
            m = f.metadata
            group.add_argument("--" + f.name.replace("_", "-"), type=number(f.type, m["valid"], m["must_be"]),
                               metavar=m["metavar"], help=f"{m['help']} (default: "
                               f"{'none' if f.default is None else f.default})")
    group.add_argument("--preset", choices=sorted(PRESETS), help="2016: train as the 2016 script does: learning "
                       "rate 1e-4, RMSProp decay 0.99, returns standardized per episode, no entropy bonus "
                       "(flags given win)")
    p.set_defaults(standardize=None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train a numpy policy network to play Pong from pixels (REINFORCE + RMSProp).")
    run = p.add_argument_group("training")
    run.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir (where the "
                     "directory holds no run yet, start one: the same command works every night)")
    run.add_argument("--init-from", metavar="FILE", help="start a new run from the weights in FILE: an agent "
                     "file (checkpoints/pretrained.pkl, an --export), a training checkpoint (its RMSProp cache "
                     "too), or the 2016 script's save.p; hyperparameters from the flags")
    run.add_argument("--checkpoint-dir", default="checkpoints", help="where checkpoints and the log live "
                     "(default: %(default)s)")
    run.add_argument("--episodes", type=positive_int, help="stop after this many more episodes, save and "
                     "exit (default: run until stopped)")
    run.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: %(default)s)")
    run.add_argument("--workers", type=positive_int, help=f"processes playing episodes (default: the cores "
                     f"available, here {available_cores()})")
    run.add_argument("--plain", action="store_true", help="train with pong_pg.py's own loop, the 2016 program: "
                     "one process, float64, dense frames (slower; the same numbers as the fast trainer)")
    run.add_argument("--save-every", type=positive_int, default=SAVE_EVERY,
                     help="episodes between checkpoints (default: %(default)s)")
    run.add_argument("--quiet", action="store_true", help="print only the per-update summaries")
    run.add_argument("--render", action="store_true", help="while training, show one worker's games in a "
                     "window (the others keep training at full speed)")
    add_hyperparameters(p)
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
    check_combinations(p, args)
    return args


def check_combinations(p, args):
    """Refuse flags that do not go together (exit 2); fill in the number of workers."""
    modes = [flag for flag in WATCH_MODES if getattr(args, flag.lstrip("-"))]
    if len(modes) > 1 and sorted(modes) != ["--play", "--record"]:
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
    args.watch = modes[0] if modes else None


def fail(message, code=1):
    print(f"pong_pg: error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- starting or resuming a run

def choose_hyperparameters(args, saved=None):
    """Flags given now win, then --preset's values (a None there turns that setting off); the others
    take the checkpoint's values (saved), or the defaults on a new run."""
    chosen, preset = {}, PRESETS.get(args.preset, {})
    for f in dataclasses.fields(Hyperparameters):
        given = getattr(args, f.name)
        is_given = given is not None or f.name in preset
        given = preset.get(f.name) if given is None else given
        before = getattr(saved, f.name) if saved else f.default
        if saved and is_given and given != before:
            if f.name == "hidden":
                fail(f"the checkpoint has {before} hidden units, --hidden asks for {given}")
            print(f"note: {f.name} changes from {before} to {given} on resume")
        chosen[f.name] = given if is_given else before
    return Hyperparameters(**chosen)


def start_from_agent(args):
    """--init-from FILE: (the agent FILE holds, its number of hidden units); a bad FILE or a --hidden
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


def resumed_state(args, paths):
    """--resume: the checkpoint's state, its hyperparameters changed by the flags given, its log trimmed
    to match."""
    try:
        state = load_state(paths["checkpoint"])
    except CheckpointError as e:
        fail(e)
    state.hyper = choose_hyperparameters(args, state.hyper)
    try:
        logged = trim_log(paths["log"], state.episode)
    except OSError as e:
        fail(f"cannot trim {paths['log']} to the checkpoint: {e.strerror or e}; nothing was changed")
    state.log_pending = [row for row in state.log_pending if log_row_episode(row) > logged]
    return state


def new_state(args, agent=None):
    """A new run: random weights, or with --init-from the agent's (and its RMSProp cache, if it has one)."""
    state = TrainingState.new(choose_hyperparameters(args), args.seed)
    if agent is not None:
        state.model = {k: np.array(v, np.float32) for k, v in agent["model"].items()}
        if "cache" in agent:                          # a training checkpoint: its RMSProp cache goes on too
            state.cache = {k: np.array(v, np.float32) for k, v in agent["cache"].items()}
            note = ", with its RMSProp cache"
        else:                                         # an empty cache under trained weights: warm up
            state.warmup_from = 0
            note = ("\nits RMSProp cache starts empty: the learning rate warms up, lr*sqrt(1 - decay^t) "
                    "in update t")
        state.init_from, state.start_seed = args.init_from, start_seed(agent)
        print(f"starting from the weights in {args.init_from} (trained for {agent.get('episode', '?')} "
              f"episodes){note}")
    return state


def prepare_run(args, paths, agent=None):
    """The state to train from: the checkpoint on --resume, else a new run whose first checkpoint is
    written before it plays."""
    if args.resume and not any(os.path.exists(paths[what]) for what in ("checkpoint", "log")):
        print(f"no run in {args.checkpoint_dir} yet: starting a new one")    # the overnight command's first night
        args.resume = False
    if args.resume:
        return resumed_state(args, paths)
    for what in ("checkpoint", "log"):
        if os.path.exists(paths[what]):
            fail(f"{paths[what]} already exists: add --resume to continue that run, or choose "
                 f"another --checkpoint-dir", code=2)
    state = new_state(args, agent)
    try:
        checkpoint.save(paths["checkpoint"], state.to_checkpoint())   # from now on, --resume always has a start
    except OSError as e:
        fail(f"cannot write to {args.checkpoint_dir}: {e.strerror or e}")
    return state


def lock_directory(directory):
    """One trainer per directory, until it ends (the OS frees the lock on a kill)."""
    try:
        return checkpoint.DirectoryLock(directory)
    except checkpoint.DirectoryInUse as e:
        holder = f" (pid {e.pid})" if e.pid else ""
        fail(f"{directory} is in use by another trainer{holder}: stop it first, or train in another "
             f"--checkpoint-dir")
    except OSError as e:
        fail(f"cannot lock {directory}: {e.strerror or e}")


def train_from_flags(args):
    agent = None
    if args.init_from:                                 # a bad FILE is refused before anything is written
        agent, args.hidden = start_from_agent(args)
    try:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --checkpoint-dir {args.checkpoint_dir}: {e.strerror or e}")
    paths = run_paths(args.checkpoint_dir)
    if args.render:
        need_display("--render")
    with lock_directory(args.checkpoint_dir) as lock:
        exit_if_stopped()
        state = prepare_run(args, paths, agent)
        lock.name_holder()
        checkpoint.remove_temporaries(args.checkpoint_dir)
        with Run(state, args.checkpoint_dir, args.save_every, args.quiet, args.episodes) as run:
            try:
                unfinished = train_plain(run) if args.plain else train(run, args.workers, args.render)
            except FloatingPointError as e:
                fail(f"training diverged: {e}; stopped without saving, the last checkpoint is kept")
            code = run.finish(unfinished)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------- watching an agent

def find_agent(args):
    """--checkpoint, else the run in --checkpoint-dir, else the shipped agent."""
    if args.checkpoint:
        return args.checkpoint
    own = run_paths(args.checkpoint_dir)["checkpoint"]
    if os.path.exists(own) or not os.path.exists(SHIPPED_AGENT):
        return own
    print(f"no run of your own in {args.checkpoint_dir}/ yet: using the shipped agent {SHIPPED_AGENT}")
    return SHIPPED_AGENT


def export_agent(args, agent):
    """--export FILE: the weights alone, in pong_pg's safe format or as the 2016 script's save.p."""
    kept = {k: agent[k] for k in ("hyper", "episode", "total_steps", "running_mean") if k in agent}
    kept["model"] = {k: v.astype(np.float32) for k, v in agent["model"].items()}   # a --plain run's too
    kept["start_seed"] = start_seed(agent)      # hyper's seed is not the start of a run from --init-from
    try:
        if args.format == "2016":
            checkpoint.save_2016(args.export, agent["model"])
        else:
            checkpoint.save(args.export, kept)
    except OSError as e:
        fail(f"cannot write {args.export}: {e.strerror or e}")
    print(f"wrote {args.export}")


def plot_agent(args, agent):
    """--plot: the learning curve and the weights pictures, into --checkpoint-dir."""
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    try:
        written = watch.draw_pictures(args.checkpoint_dir, agent["model"]["W1"],
                                      run_paths(args.checkpoint_dir)["log"], initial_W1(agent),
                                      W2=agent["model"]["W2"])
        written.append(watch.weights_animation(args.checkpoint_dir))
    except (ImportError, watch.MissingDependency) as e:
        fail(e)
    for picture in filter(None, written):
        print(f"wrote {picture}")


def eval_agent(args, agent):
    """--eval N: N games with the sampled policy and N with the greedy one, on every worker."""
    print(f"evaluating over {args.eval} games per policy on {args.workers} worker(s)")
    results = watch.evaluate(play_episode, play_weights(agent["model"]), args.eval, args.seed, args.workers,
                             Stop.arrived)
    if results:
        watch.print_evaluation(results)


def record_agent(args, agent):
    """--record FILE: a video of one game (annotated with --annotate)."""
    try:
        watch.record(play_episode, play_weights(agent["model"]), args.record, args.seed, args.greedy,
                     args.max_steps, Stop.arrived, policy_forward_sparse if args.annotate else None)
    except watch.MissingDependency as e:
        fail(e)
    except OSError as e:
        fail(f"cannot write {args.record}: {e.strerror or e}")


def play_agent(args, agent):
    """--play: the agent's games in a window."""
    need_display("--play")
    try:
        watch.show(play_episode, play_weights(agent["model"]), args.episodes, args.seed, args.greedy,
                   args.max_steps, Stop.arrived, policy_forward_sparse if args.annotate else None)
    except watch.MissingDependency as e:
        fail(e)


WATCH_MODES = {"--export": export_agent, "--plot": plot_agent, "--eval": eval_agent, "--record": record_agent,
               "--play": play_agent}     # with --play and --record both given, --record


def watch_agent(args):
    path = find_agent(args)
    try:
        agent = load_agent(path)
    except CheckpointError as e:
        hint = "" if os.path.exists(path) else " (train first: python pong_pg.py)"
        fail(f"{e}{hint}", code=2 if args.checkpoint else 1)     # a file named on the command line: bad input
    print(f"agent {path}: trained for {agent.get('episode', '?')} episodes, "
          f"running mean {agent.get('running_mean') or 0:+.2f}")
    WATCH_MODES[args.watch](args, agent)


def need_display(flag):
    """On Linux an SDL window needs an X11 or Wayland display; without one it would silently show nothing."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        fail(f"{flag} needs a display and none is set (DISPLAY): use --record agent.mp4 instead, or run "
             f"under a virtual display: xvfb-run python pong_pg.py {flag}")


def exit_if_stopped():
    """A stop asked for before anything was written ends here, quietly: 128 + the signal's number."""
    if Stop.arrived():
        sys.exit(128 + Stop.signum)


def main(argv=None):
    if signal.getsignal(signal.SIGINT) != Stop.handler:    # called from Python: no stop pending yet
        Stop.signum = None
        Stop.catch()
    args = parse_args(argv)
    exit_if_stopped()
    if args.watch:
        watch_agent(args)
        exit_if_stopped()
    else:
        train_from_flags(args)


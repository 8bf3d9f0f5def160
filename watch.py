"""Watching an agent: play in a window, record a video, evaluate its strength, draw training as pictures.

Each function is handed the function that plays an episode (pong_pg.play_episode), so this module
needs nothing from the script.
"""
import csv
import math
import os
import tempfile
import time
import zlib

import numpy as np

from workers import WorkerPool, make_env, task_rng

EVAL_SEED_OFFSET = 10 ** 9      # evaluation games use random streams that training never uses
RECORD_FPS = 15                 # one video frame per agent step: 15 a second is the game's real speed
RECORD_SCALE = 3                # 160x210 frames, enlarged 3x

# t distribution, 97.5% quantile, for 1..30 degrees of freedom (the 95% confidence interval)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def confidence_95(scores):
    """Half-width of the 95% confidence interval of the mean of scores (Student's t)."""
    n = len(scores)
    if n < 2:
        return float("nan")
    t = T_975[n - 2] if n - 1 <= len(T_975) else 1.96
    return t * np.std(scores, ddof=1) / math.sqrt(n)


def points(episode):
    """(points won, points lost) in an episode."""
    return int((episode.rewards > 0).sum()), int((episode.rewards < 0).sum())


class Stopped(Exception):
    """A stop signal arrived while a game was being played."""


def never():
    return False


def describe(episode):
    won, lost = points(episode)
    return f"{won}-{lost}" + (" (cut short)" if won < 21 and lost < 21 else "")


# ---------------------------------------------------------------- play in a window

def show(play_episode, weights, episodes, seed, greedy, max_steps, stopped=never):
    """Show the agent in a window (ale-py's own SDL window, at the game's real speed), until
    `episodes` games are over or stopped() says to stop."""
    def on_step(frame, rewards):
        if stopped():
            raise Stopped
    env = make_env(render_mode="human")
    env.reset(seed=seed)
    game = 0
    try:
        while (episodes is None or game < episodes) and not stopped():
            game += 1
            episode = play_episode(env, weights, task_rng(seed + EVAL_SEED_OFFSET, game), greedy=greedy,
                                   on_step=on_step, max_steps=max_steps)
            print(f"game {game}: {describe(episode)}, score {episode.score:+d}, {episode.steps} steps",
                  flush=True)
    except Stopped:
        pass
    finally:
        env.close()


# ---------------------------------------------------------------- record a video

class MissingDependency(Exception):
    pass


def open_video(path):
    """A writer with .write(rgb_frame) and .close() for .mp4 (PyAV) or .gif (Pillow)."""
    if path.lower().endswith(".gif"):
        try:
            from PIL import Image
        except ImportError:
            raise MissingDependency("recording a GIF needs Pillow: pip install pillow") from None
        return GifWriter(path, Image)
    if path.lower().endswith(".mp4"):
        try:
            import av
        except ImportError:
            raise MissingDependency("recording an MP4 needs PyAV: pip install av") from None
        return Mp4Writer(path, av)
    raise ValueError(f"--record {path}: the file name must end in .mp4 or .gif")


def enlarge(frame):
    return np.repeat(np.repeat(frame, RECORD_SCALE, axis=0), RECORD_SCALE, axis=1)


class Mp4Writer:
    def __init__(self, path, av):
        self.av = av
        self.container = av.open(path, mode="w")
        self.stream = self.container.add_stream("libx264", rate=RECORD_FPS)
        self.stream.width, self.stream.height = 160 * RECORD_SCALE, 210 * RECORD_SCALE
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame):
        video_frame = self.av.VideoFrame.from_ndarray(enlarge(frame), format="rgb24")
        self.container.mux(self.stream.encode(video_frame))

    def close(self):
        self.container.mux(self.stream.encode())      # flush the encoder
        self.container.close()


class GifWriter:
    """Pillow writes an animated GIF in one call, so the frames wait in memory, zlib-compressed (a Pong
    frame shrinks from 100 KB to about 1 KB). Pillow merges identical consecutive frames into one
    longer frame: the timing stays right."""

    def __init__(self, path, Image):
        self.path, self.Image, self.frames = path, Image, []

    def write(self, frame):
        self.frames.append(zlib.compress(frame.tobytes(), 1))

    def close(self):
        def images():
            for data in self.frames:
                frame = np.frombuffer(zlib.decompress(data), np.uint8).reshape(210, 160, 3)
                yield self.Image.fromarray(enlarge(frame)).quantize(colors=16)
        frames = images()
        first = next(frames)
        first.save(self.path, save_all=True, append_images=frames, duration=round(1000 / RECORD_FPS), loop=0)


def record(play_episode, weights, path, seed, greedy, max_steps, stopped=never):
    """Play one game without a window and write it to a video file; show progress on the way. The
    video is written to a temporary file beside path and renamed when whole: a recording that fails
    or is stopped (stopped() turns true) leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1],
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        episode, seconds = _record_to(play_episode, weights, tmp, seed, greedy, max_steps, stopped)
        os.replace(tmp, path)
    except Stopped:
        return
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {path}: {episode.steps} frames ({episode.steps / RECORD_FPS:.0f} s at {RECORD_FPS} fps), "
          f"game {describe(episode)}, {seconds:.0f} s to record")


def _record_to(play_episode, weights, path, seed, greedy, max_steps, stopped):
    video = open_video(path)
    env = make_env()
    env.reset(seed=seed)
    start, last_report = time.time(), [0.0]

    def on_step(frame, rewards):
        if stopped():
            raise Stopped
        video.write(frame)
        if time.time() - last_report[0] > 2:
            last_report[0] = time.time()
            won, lost = sum(r > 0 for r in rewards), sum(r < 0 for r in rewards)
            print(f"recording: {len(rewards)} frames, {won}-{lost}", flush=True)
    try:
        episode = play_episode(env, weights, task_rng(seed + EVAL_SEED_OFFSET, 0), greedy=greedy,
                               on_step=on_step, max_steps=max_steps)
    finally:
        video.close()
        env.close()
    return episode, time.time() - start


# ---------------------------------------------------------------- evaluate

def evaluate(play_episode, weights, n, seed, workers, stopped=never):
    """Play n games with the sampled policy and n with the greedy one, on all workers, no learning.
    Returns {"sampled": [Episode], "greedy": [Episode]}, or None if stopped() turned true first."""
    jobs = ["sampled"] * n + ["greedy"] * n
    results = {"sampled": [], "greedy": []}
    policy = (0, weights)                           # (version, weights): sent to each worker once
    running, next_job = {}, 0
    with WorkerPool(min(workers, len(jobs)), play_episode, seed, EVAL_SEED_OFFSET) as pool:
        while pool.busy or next_job < len(jobs):
            if stopped():
                return None
            for worker in pool.idle():
                if next_job < len(jobs):
                    running[worker] = jobs[next_job]
                    pool.start(worker, EVAL_SEED_OFFSET + next_job, policy, greedy=jobs[next_job] == "greedy")
                    next_job += 1
            result = pool.next_result(timeout=1.0)
            if result is None:
                continue
            worker, episode, _ = result
            mode = running.pop(worker)
            results[mode].append(episode)
            done = len(results["sampled"]) + len(results["greedy"])
            print(f"eval {done}/{len(jobs)} ({mode}): {describe(episode)}, score {episode.score:+d}",
                  flush=True)
    return results


def summary(mode, episodes):
    scores = np.array([e.score for e in episodes])
    won = sum(points(e)[0] for e in episodes)
    lost = sum(points(e)[1] for e in episodes)
    wins = sum(points(e)[0] == 21 for e in episodes)
    return (f"{mode} policy: mean score {scores.mean():+.2f} ± {confidence_95(scores):.2f} (95% CI, "
            f"{len(scores)} games), won {wins}/{len(scores)} games ({100 * wins / len(scores):.0f}%), "
            f"points {won} won / {lost} lost")


def print_evaluation(results):
    for mode in ("sampled", "greedy"):
        print(summary(mode, results[mode]))


# ---------------------------------------------------------------- training as pictures

CURVE_FILE = "learning_curve.png"
WEIGHTS_FILE = "weights.png"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")                       # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _pillow():
    """PIL.Image, from Pillow, which matplotlib installs."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    return Image


def read_log(path):
    """The per-episode CSV log as arrays: episode, score, running_mean, wall_seconds."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("episode", "score", "running_mean",
                                                                "wall_seconds")}


def learning_curve(log_path, out_path, title="pong_pg"):
    """Episode score and running mean against episodes (left) and against wall time (right)."""
    plt = _pyplot()
    log = read_log(log_path)
    fig, (by_episode, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    long_run = len(log["wall_seconds"]) and log["wall_seconds"][-1] > 2 * 3600
    wall, unit = (log["wall_seconds"] / 3600, "hours") if long_run else (log["wall_seconds"] / 60, "minutes")
    for ax, x, label in ((by_episode, log["episode"], "episode"), (by_time, wall, f"wall time ({unit})")):
        ax.scatter(x, log["score"], s=2, color="tab:blue", alpha=0.25, label="episode score")
        ax.plot(x, log["running_mean"], color="tab:red", lw=2, label="running mean (0.99)")
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylim(-21.5, 21.5)
        ax.grid(alpha=0.3)
    by_episode.set_ylabel("score (points won - points lost)")
    by_episode.legend(loc="upper left")
    fig.suptitle(f"{title}: {len(log['episode'])} episodes, running mean {log['running_mean'][-1]:+.1f}"
                 if len(log["episode"]) else title)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def weights_image(W1, out_path, columns=20):
    """Each hidden unit's 6,400 weights as an 80x80 tile, in a grid (as the 2016 write-up showed them)."""
    hidden = W1.shape[0]
    rows = -(-hidden // columns)
    tile, gap = 80, 2
    grid = np.full((rows * (tile + gap) + gap, columns * (tile + gap) + gap), 0.5, np.float32)
    for i in range(hidden):
        w = W1[i].reshape(tile, tile)
        scaled = 0.5 + 0.5 * w / max(np.abs(w).max(), 1e-12)    # each tile on its own scale, 0 = gray
        r, c = divmod(i, columns)
        grid[gap + r * (tile + gap):gap + r * (tile + gap) + tile,
             gap + c * (tile + gap):gap + c * (tile + gap) + tile] = scaled
    gray = np.round(grid * 255).astype(np.uint8)
    _pillow().fromarray(gray, "L").save(out_path)   # an 8-bit gray PNG


def draw_pictures(directory, W1, log_path):
    """Rewrite the pictures in directory (the learning curve only if the log exists); returns their paths."""
    written = []
    if os.path.exists(log_path):
        written.append(os.path.join(directory, CURVE_FILE))
        learning_curve(log_path, written[-1])
    written.append(os.path.join(directory, WEIGHTS_FILE))
    weights_image(W1, written[-1])
    return written

"""Watching a trained agent: play in a window, record a video, evaluate its strength."""
import math
import time
import zlib

import numpy as np

from rollout import WorkerPool, make_env, play_episode, task_rng

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


def describe(episode):
    won, lost = points(episode)
    return f"{won}-{lost}" + (" (cut short)" if won < 21 and lost < 21 else "")


# ---------------------------------------------------------------- play in a window

def play(weights, episodes, seed, greedy, max_steps):
    """Show the agent in a window (ale-py's own SDL window, at the game's real speed)."""
    env = make_env(render_mode="human")
    env.reset(seed=seed)
    game = 0
    while episodes is None or game < episodes:
        game += 1
        episode = play_episode(env, weights, task_rng(seed + EVAL_SEED_OFFSET, game), greedy=greedy,
                               max_steps=max_steps)
        print(f"game {game}: {describe(episode)}, score {episode.score:+d}, {episode.steps} steps", flush=True)
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


def record(weights, path, seed, greedy, max_steps):
    """Play one game without a window and write it to a video file; show progress on the way."""
    video = open_video(path)
    env = make_env()
    env.reset(seed=seed)
    start, last_report = time.time(), [0.0]

    def on_step(frame, rewards):
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
    print(f"wrote {path}: {episode.steps} frames ({episode.steps / RECORD_FPS:.0f} s at {RECORD_FPS} fps), "
          f"game {describe(episode)}, {time.time() - start:.0f} s to record")


# ---------------------------------------------------------------- evaluate

def evaluate(weights, n, seed, workers):
    """Play n games with the sampled policy and n with the greedy one, on all workers, no learning.
    Returns {"sampled": [Episode], "greedy": [Episode]}."""
    jobs = ["sampled"] * n + ["greedy"] * n
    results = {"sampled": [], "greedy": []}
    pool = WorkerPool(min(workers, len(jobs)), seed, EVAL_SEED_OFFSET)
    running, next_job, sent = {}, 0, set()
    try:
        def assign(worker):
            nonlocal next_job
            mode = jobs[next_job]
            pool.assign(worker, EVAL_SEED_OFFSET + next_job, None if worker in sent else weights,
                        greedy=mode == "greedy")
            sent.add(worker)
            running[worker] = mode
            next_job += 1
        for worker in range(len(pool)):
            assign(worker)
        while pool.busy:
            result = pool.next_result(timeout=1.0)
            if result is None:
                continue
            worker, episode = result
            mode = running.pop(worker)
            results[mode].append(episode)
            done = len(results["sampled"]) + len(results["greedy"])
            print(f"eval {done}/{len(jobs)} ({mode}): {describe(episode)}, score {episode.score:+d}",
                  flush=True)
            if next_job < len(jobs):
                assign(worker)
    finally:
        pool.close()
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

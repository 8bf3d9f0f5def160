"""Watching an agent: play in a window, record a video, evaluate its strength, draw training as pictures.

Each function is handed the function that plays an episode (pong_pg.play_episode), so this module
needs nothing from the script.
"""
import contextlib
import csv
import math
import os
import tempfile
import time
import zlib

import numpy as np

from workers import WeightsVersion, WorkerPool, make_env, task_rng

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

def show(play_episode, weights, episodes, seed, greedy, max_steps, stopped=never, policy_forward=None):
    """Show the agent in a window at the game's real speed, until `episodes` games are over or
    stopped() says to stop: ale-py's own SDL window, or with policy_forward a window of ours with the
    game and the panel of what the network sees and does (see Annotator)."""
    window = AnnotatedWindow(Annotator(policy_forward, weights)) if policy_forward else None

    def on_step(frame, idx, turned_on, up, rewards):
        if stopped():
            raise Stopped
        if window:
            window.show(window.annotator.compose(frame, idx, turned_on, up, rewards))
    env = make_env(render_mode=None if window else "human")
    env.reset(seed=seed)
    game = 0
    try:
        while (episodes is None or game < episodes) and not stopped():
            game += 1
            if window:
                window.annotator.new_game()
            episode = play_episode(env, weights, task_rng(seed + EVAL_SEED_OFFSET, game), greedy=greedy,
                                   on_step=on_step, max_steps=max_steps)
            print(f"game {game}: {describe(episode)}, score {episode.score:+d}, {episode.steps} steps",
                  flush=True)
    except Stopped:
        pass
    finally:
        env.close()
        if window:
            window.close()


class AnnotatedWindow:
    """A tkinter window that shows one image per agent step, at RECORD_FPS steps a second. Closing it
    stops the games like Ctrl-C."""

    def __init__(self, annotator):
        try:
            import tkinter

            from PIL import ImageTk
        except ImportError:
            raise MissingDependency("--play --annotate needs tkinter (Debian, Ubuntu: apt-get install "
                                    "python3-tk) and Pillow's ImageTk") from None
        self.annotator, self.ImageTk, self.tkinter = annotator, ImageTk, tkinter
        self.root = tkinter.Tk()
        self.root.title("pong_pg: what the agent sees")
        self.label = tkinter.Label(self.root)
        self.label.pack()
        self.next_frame = time.time()

    def show(self, image):
        try:
            self.photo = self.ImageTk.PhotoImage(self.annotator.Image.fromarray(image))   # kept: Tk needs it
            self.label.configure(image=self.photo)
            self.root.update()
        except self.tkinter.TclError:             # the window was closed
            raise Stopped from None
        self.next_frame += 1 / RECORD_FPS
        time.sleep(max(0.0, self.next_frame - time.time()))

    def close(self):
        with contextlib.suppress(self.tkinter.TclError):
            self.root.destroy()


# ---------------------------------------------------------------- record a video

class MissingDependency(Exception):
    pass


def pillow():
    """PIL.Image, ImageDraw and ImageFont, from Pillow (which matplotlib installs)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise MissingDependency("pictures and GIFs need Pillow: pip install pillow") from None
    return Image, ImageDraw, ImageFont


def open_video(path, width, height):
    """A writer with .write(rgb_image) and .close() for .mp4 (PyAV) or .gif (Pillow)."""
    if path.lower().endswith(".gif"):
        return GifWriter(path, pillow()[0], width, height)
    if path.lower().endswith(".mp4"):
        try:
            import av
        except ImportError:
            raise MissingDependency("recording an MP4 needs PyAV: pip install av") from None
        return Mp4Writer(path, av, width, height)
    raise ValueError(f"--record {path}: the file name must end in .mp4 or .gif")


def enlarge(image, scale=RECORD_SCALE):
    """Each pixel becomes a scale x scale block."""
    h, w = image.shape[:2]
    blocks = np.broadcast_to(image[:, None, :, None], (h, scale, w, scale, *image.shape[2:]))
    return blocks.reshape(h * scale, w * scale, *image.shape[2:])


class Mp4Writer:
    def __init__(self, path, av, width, height):
        self.av = av
        self.container = av.open(path, mode="w")
        self.stream = self.container.add_stream("libx264", rate=RECORD_FPS)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast"}   # a few times faster to encode than the default, as sharp

    def write(self, image):
        self.container.mux(self.stream.encode(self.av.VideoFrame.from_ndarray(image, format="rgb24")))

    def close(self):
        self.container.mux(self.stream.encode())      # flush the encoder
        self.container.close()


class GifWriter:
    """Pillow writes an animated GIF in one call, so the frames wait in memory, zlib-compressed (a Pong
    frame has few colours and large flat areas). Pillow merges identical consecutive frames into one
    longer frame: the timing stays right."""

    def __init__(self, path, Image, width, height):
        self.path, self.Image, self.shape, self.frames = path, Image, (height, width, 3), []

    def write(self, image):
        self.frames.append(zlib.compress(image.tobytes(), 1))

    def close(self):
        def images():
            for data in self.frames:
                image = np.frombuffer(zlib.decompress(data), np.uint8).reshape(self.shape)
                yield self.Image.fromarray(image).quantize(colors=64)
        frames = images()
        first = next(frames)
        first.save(self.path, save_all=True, append_images=frames, duration=round(1000 / RECORD_FPS), loop=0)


def record(play_episode, weights, path, seed, greedy, max_steps, stopped=never, policy_forward=None):
    """Play one game without a window and write it to a video file; show progress on the way. With
    policy_forward (see Annotator) each frame gets a panel of what the network sees and does. The video
    is written to a temporary file beside path and renamed when whole: a recording that fails or is
    stopped (stopped() turns true) leaves nothing behind."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1],
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        episode, seconds = _record_to(play_episode, weights, tmp, seed, greedy, max_steps, stopped, policy_forward)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                 # as a file the user wrote, not mkstemp's 0600
        os.replace(tmp, path)
    except Stopped:
        return
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {path}: {episode.steps} frames ({episode.steps / RECORD_FPS:.0f} s at {RECORD_FPS} fps), "
          f"game {describe(episode)}, {seconds:.0f} s to record")


def _record_to(play_episode, weights, path, seed, greedy, max_steps, stopped, policy_forward):
    annotator = Annotator(policy_forward, weights) if policy_forward else None
    width = 160 * RECORD_SCALE + (PANEL_WIDTH if annotator else 0)
    video = open_video(path, width, 210 * RECORD_SCALE)
    env = make_env()
    env.reset(seed=seed)
    start, last_report = time.time(), [0.0]

    def on_step(frame, idx, turned_on, up, rewards):
        if stopped():
            raise Stopped
        video.write(annotator.compose(frame, idx, turned_on, up, rewards) if annotator else enlarge(frame))
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


# ---------------------------------------------------------------- what the agent sees (--annotate)

PANEL_WIDTH = 280               # beside the 480-pixel-wide game
PANEL_MARGIN = 20
DIFF_SCALE = 3                  # the 80x80 difference frame, 240x240
DIFF_TOP = 34
BAR_TOP = 312                   # P(UP) as a bar, 240 pixels for P(UP) = 1
BAR_WIDTH, BAR_HEIGHT = 240, 16
TRACE_TOP, TRACE_HEIGHT, TRACE_STEPS = 360, 70, 45     # the last 3 s of P(UP) and the actions taken
GRID_TOP, GRID_COLUMNS, GRID_CELL = 470, 20, 12       # the hidden activations, 20 units a row
PANEL_COLORS = {"background": (24, 24, 32), "zero": (0, 0, 0), "appeared": (90, 230, 90), "gone": (240, 80, 80),
          "text": (230, 230, 230), "bar": (80, 150, 255), "empty": (60, 60, 75), "up": (90, 230, 90),
          "down": (240, 80, 80)}


class Annotator:
    """The panel beside each game frame: the 80x80 difference frame the network receives (+1 green,
    -1 red), P(UP) as a bar and as a trace over the last 3 seconds with the actions taken (green ticks
    above: UP, red below: DOWN), the 200 hidden activations as a grid (brighter = stronger), the score.
    policy_forward(weights, idx, vals) -> (P(UP), hidden activations) is the policy's forward pass."""

    def __init__(self, policy_forward, weights):
        self.policy_forward, self.weights = policy_forward, weights
        self.Image, self.ImageDraw, ImageFont = pillow()
        try:
            self.font = ImageFont.load_default(size=13)
        except TypeError:                       # Pillow < 10.1: the built-in bitmap font
            self.font = ImageFont.load_default()
        self.new_game()

    def new_game(self):
        self.trace, self.hidden_scale = [], 1e-6

    def _template(self):
        """The panel's unchanging parts: background and labels."""
        if not hasattr(self, "template"):
            self.template = self.Image.new("RGB", (PANEL_WIDTH, 210 * RECORD_SCALE), PANEL_COLORS["background"])
            draw, x = self.ImageDraw.Draw(self.template), PANEL_MARGIN
            draw.text((x, DIFF_TOP + 80 * DIFF_SCALE + 4), "green: appeared   red: gone", fill=PANEL_COLORS["text"],
                      font=self.font)
            draw.text((x, TRACE_TOP - 18), "P(UP), last 3 s (ticks: actions)", fill=PANEL_COLORS["text"],
                      font=self.font)
            draw.rectangle([x, TRACE_TOP, x + BAR_WIDTH - 1, TRACE_TOP + TRACE_HEIGHT - 1],
                           outline=PANEL_COLORS["empty"])
            draw.text((x, GRID_TOP - 18), "hidden units (ReLU activations)", fill=PANEL_COLORS["text"],
                      font=self.font)
        return self.template.copy()

    def compose(self, frame, idx, turned_on, up, rewards):
        """The game frame, enlarged, with the panel for this step on its right: (630, 760, 3) uint8."""
        vals = np.where(turned_on, 1, -1).astype(np.float32)
        p_up, hidden = self.policy_forward(self.weights, idx, vals)
        self.trace = (self.trace + [(p_up, up)])[-TRACE_STEPS:]
        self.hidden_scale = max(self.hidden_scale, float(hidden.max()))
        panel = self._template()
        draw = self.ImageDraw.Draw(panel)
        x = PANEL_MARGIN
        draw.text((x, 8), f"what the network sees, step {len(rewards) + 1}", fill=PANEL_COLORS["text"], font=self.font)
        panel.paste(self.Image.fromarray(enlarge(difference_image(idx, turned_on), DIFF_SCALE)), (x, DIFF_TOP))
        draw.text((x, BAR_TOP - 18), f"P(UP) = {p_up:.2f}, action {'UP' if up else 'DOWN'}", fill=PANEL_COLORS["text"],
                  font=self.font)
        draw.rectangle([x, BAR_TOP, x + BAR_WIDTH - 1, BAR_TOP + BAR_HEIGHT - 1], fill=PANEL_COLORS["empty"])
        if p_up * BAR_WIDTH >= 1:
            draw.rectangle([x, BAR_TOP, x + round(p_up * BAR_WIDTH) - 1, BAR_TOP + BAR_HEIGHT - 1],
                           fill=PANEL_COLORS["bar"])
        self._draw_trace(draw, x)
        self._draw_hidden(draw, x, hidden)
        won, lost = sum(r > 0 for r in rewards), sum(r < 0 for r in rewards)
        draw.text((x, 210 * RECORD_SCALE - 24), f"score: agent {won} - {lost} built-in AI", fill=PANEL_COLORS["text"],
                  font=self.font)
        return np.concatenate([enlarge(frame), np.asarray(panel)], axis=1)

    def _draw_trace(self, draw, x):
        top, bottom = TRACE_TOP + 6, TRACE_TOP + TRACE_HEIGHT - 6
        step = BAR_WIDTH / TRACE_STEPS
        points = []
        for i, (p, up) in enumerate(self.trace):
            px = x + (TRACE_STEPS - len(self.trace) + i + 0.5) * step
            points.append((px, bottom - p * (bottom - top)))
            tick = (TRACE_TOP, TRACE_TOP + 4) if up else (TRACE_TOP + TRACE_HEIGHT - 5, TRACE_TOP + TRACE_HEIGHT - 1)
            draw.line([(px, tick[0]), (px, tick[1])], fill=PANEL_COLORS["up" if up else "down"])
        if len(points) > 1:
            draw.line(points, fill=PANEL_COLORS["bar"], width=2)

    def _draw_hidden(self, draw, x, hidden):
        for unit, value in enumerate(hidden):
            row, column = divmod(unit, GRID_COLUMNS)
            level = round(255 * min(value / self.hidden_scale, 1.0))
            left, top = x + column * GRID_CELL, GRID_TOP + row * GRID_CELL
            draw.rectangle([left, top, left + GRID_CELL - 2, top + GRID_CELL - 2], fill=(level, level, level // 2))


def difference_image(idx, turned_on):
    """The 80x80 difference frame as an RGB image: +1 green, -1 red, 0 black."""
    image = np.zeros((80 * 80, 3), np.uint8)
    image[:] = PANEL_COLORS["zero"]
    image[idx[turned_on]] = PANEL_COLORS["appeared"]
    image[idx[~turned_on]] = PANEL_COLORS["gone"]
    return image.reshape(80, 80, 3)


# ---------------------------------------------------------------- evaluate

def evaluate(play_episode, weights, n, seed, workers, stopped=never):
    """Play n games with the sampled policy and n with the greedy one, on all workers, no learning.
    Returns {"sampled": [Episode], "greedy": [Episode]}, or None if stopped() turned true first."""
    jobs = ["sampled"] * n + ["greedy"] * n
    results = {"sampled": [], "greedy": []}
    snapshot = WeightsVersion(0, weights)      # sent to each worker once
    running, next_job = {}, 0
    with WorkerPool(min(workers, len(jobs)), play_episode, seed, EVAL_SEED_OFFSET) as pool:
        pool.wait_until_ready(stopped)
        while pool.busy or next_job < len(jobs):
            if stopped():
                return None
            for worker in pool.idle():
                if next_job < len(jobs):
                    running[worker] = jobs[next_job]
                    pool.start(worker, EVAL_SEED_OFFSET + next_job, snapshot, greedy=jobs[next_job] == "greedy")
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


def read_log(path):
    """The rows of a trainer's log.csv, each a dict of its columns (as text); [] where there is none.
    A row being written (not whole yet) is left out."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("wall_seconds")]


def learning_curve(log_path, out_path, title="pong_pg"):
    """Episode score and running mean against episodes (left) and against wall time (right)."""
    plt = _pyplot()
    rows = read_log(log_path)
    log = {k: np.array([float(r[k]) for r in rows]) for k in ("episode", "score", "running_mean", "wall_seconds")}
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


NOISE_STDS = 2.5               # a change stands out of the noise beyond this many standard deviations
SHOWN_WHITE = 90               # percentile of a tile's changes that stand out, drawn full white or black


def stands_out(change):
    """The part of a tile's weight changes beyond NOISE_STDS of their standard deviation (soft
    threshold): the updates a rarely seen pixel collects are noise of about one step each, and hide the
    detectors; what stands out of them is what the unit learned."""
    return np.sign(change) * np.maximum(np.abs(change) - NOISE_STDS * change.std(), 0)


def tile_values(w, W1_init_row=None):
    """One hidden unit's 80x80 weights as values in [-1, 1] to draw: the weights on their own scale;
    with the initial weights, what training changed where it stands out of the noise, scaled so that
    the strongest SHOWN_WHITE% of it is white (raised) or black (lowered)."""
    if W1_init_row is None:
        return w / max(np.abs(w).max(), 1e-12)
    change = stands_out(w - W1_init_row.reshape(w.shape))
    strong = np.abs(change[change != 0])
    return np.clip(change / (np.percentile(strong, SHOWN_WHITE) if len(strong) else 1.0), -1, 1)


def weights_grid(W1, W1_init=None, columns=20, pool=1, W2=None, units=None):
    """Each hidden unit's 6,400 weights as an 80x80 tile (80/pool with pool x pool max-|w| pooling), in
    a grid as the 2016 write-up showed them: 8-bit gray, mid gray 0, white positive, black negative,
    each tile on its own scale, dark gaps. With W1_init, what training changed (tile_values). With W2,
    the units that move P(UP) most (largest |W2|) first; units: draw only that many."""
    order = np.argsort(-np.abs(W2), kind="stable") if W2 is not None else np.arange(W1.shape[0])
    order = order[:units]
    rows = -(-len(order) // columns)
    tile, gap = 80 // pool, 2
    grid = np.full((rows * (tile + gap) + gap, columns * (tile + gap) + gap), 0.1, np.float32)
    for i, unit in enumerate(order):
        w = tile_values(W1[unit].reshape(80, 80).astype(np.float64), None if W1_init is None else W1_init[unit])
        if pool > 1:                                # keep the strongest value of each block, thin lines too
            blocks = w.reshape(tile, pool, tile, pool).transpose(0, 2, 1, 3).reshape(tile, tile, pool * pool)
            w = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[..., None], axis=2)[..., 0]
        r, c = divmod(i, columns)
        grid[gap + r * (tile + gap):gap + r * (tile + gap) + tile,
             gap + c * (tile + gap):gap + c * (tile + gap) + tile] = 0.5 + 0.5 * w
    return np.round(grid * 255).astype(np.uint8)


HISTORY_DIR = "weights_history"     # a small weights picture at each refresh while training
ANIMATION_FILE = "weights_over_training.gif"


def draw_pictures(directory, W1, log_path, W1_init=None, moment=None, W2=None):
    """Rewrite the pictures in directory (the learning curve only if the log exists); returns their
    paths. moment = (episode, running mean) also keeps a half-size weights picture in HISTORY_DIR;
    W2: see weights_grid."""
    Image = pillow()[0]
    written = []
    if os.path.exists(log_path):
        written.append(os.path.join(directory, CURVE_FILE))
        learning_curve(log_path, written[-1])
    written.append(os.path.join(directory, WEIGHTS_FILE))
    Image.fromarray(weights_grid(W1, W1_init, W2=W2), "L").save(written[-1])
    if moment is not None:
        from PIL.PngImagePlugin import PngInfo
        os.makedirs(os.path.join(directory, HISTORY_DIR), exist_ok=True)
        episode, running_mean = moment
        info = PngInfo()
        info.add_text("episode", str(episode))
        info.add_text("running_mean", f"{running_mean:+.2f}" if running_mean is not None else "")
        Image.fromarray(weights_grid(W1, W1_init, pool=2), "L").save(
            os.path.join(directory, HISTORY_DIR, f"episode_{episode:09d}.png"), pnginfo=info)
    return written


def weights_animation(directory):
    """weights_over_training.gif from HISTORY_DIR: one frame per picture kept while training, each
    labelled with its episode and running mean; its path, or None if nothing was kept."""
    Image, ImageDraw, ImageFont = pillow()
    history = os.path.join(directory, HISTORY_DIR)
    names = sorted(os.listdir(history)) if os.path.isdir(history) else []
    if not names:
        return None
    font = ImageFont.load_default()
    frames = []
    for name in names:
        with Image.open(os.path.join(history, name)) as picture:
            label = f"episode {picture.text.get('episode', '?')}, running mean {picture.text.get('running_mean', '?')}"
            frame = Image.new("L", (picture.width, picture.height + 20), 0)
            frame.paste(picture, (0, 20))
        ImageDraw.Draw(frame).text((6, 4), label, fill=255, font=font)
        frames.append(frame)
    path = os.path.join(directory, ANIMATION_FILE)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=500, loop=0)
    return path

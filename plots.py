"""Training as pictures: the learning curve and the first-layer weights, as PNG files."""
import csv
import os

import numpy as np

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
    _pillow().fromarray(gray, "L").save(out_path)   # 8-bit gray PNG: a tenth of the time of a colormapped imsave


def refresh(directory, W1, log_path):
    """Rewrite the pictures in directory (the learning curve only if the log exists); returns their paths."""
    written = []
    if os.path.exists(log_path):
        written.append(os.path.join(directory, CURVE_FILE))
        learning_curve(log_path, written[-1])
    written.append(os.path.join(directory, WEIGHTS_FILE))
    weights_image(W1, written[-1])
    return written

"""Would a worker spend less of its own time per agent step if it played several games at once?

A worker's own work beside the emulator (read the screen, the difference frame, the forward pass) is
a couple of dozen small numpy calls per agent step, each slowed by the cache misses the emulator's
four frames leave behind. Playing K games in lockstep would make one call serve K games: the K
screens read into one array, one colour lookup and one comparison for all of them, one matrix
product for the K forward passes. This measures, in one process, the microseconds per agent step
spent outside the emulator:

  - play_episode as the workers run it (one game), its emulator calls timed apart; its figure also
    holds each game's start and end (env.reset, compact_episode), which the lockstep loop leaves out,
    so the comparison leans towards lockstep;
  - K games in lockstep, for each K of --games (the same work, batched; it keeps each game's steps as
    play_episode does, and skips what both would do the same way: the episode's gradient sums).

    python bench/lockstep.py [--games 1,4,8] [--steps 16000] [--rounds 2]

The lockstep loop is a measurement, not the trainer's code: it plays real games by the same rules but
does not reproduce play_episode's random numbers. Compare the ratios to the emulator within one run.
"""
import argparse
import os
import sys
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"          # as in the workers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np

import pong_pg_fast
from pong_pg import DOWN, UP, init_model
from pong_pg_fast import play_weights
from preprocess import FIELD, SIGN, UNKNOWN_BYTE, D, learn_colors, new_color_table, screen_pixels
from workers import game_step, make_env

CLOCK = time.perf_counter


def one_game(weights, steps):
    """(emulator, ours) microseconds per agent step of pong_pg_fast.play_episode, its game_step calls timed."""
    env, emulator, played = make_env(), [0.0], 0
    env.reset(seed=0)

    def timed_game_step(env):
        step = game_step(env)

        def timed(action):
            start = CLOCK()
            result = step(action)
            emulator[0] += CLOCK() - start
            return result
        return timed

    pong_pg_fast.game_step, start = timed_game_step, CLOCK()
    try:
        while played < steps:
            played += pong_pg_fast.play_episode(env, weights, np.random.default_rng(played)).steps
    finally:
        pong_pg_fast.game_step = game_step
    return 1e6 * emulator[0] / played, 1e6 * (CLOCK() - start - emulator[0]) / played


def lockstep(weights, games, steps):
    """(emulator, ours) microseconds per agent step of `games` games played in lockstep in one process."""
    W1T, W2 = weights["W1T"], weights["W2"]
    envs = [make_env() for _ in range(games)]
    ales = [env.unwrapped.ale for env in envs]
    steps_of = [game_step(env) for env in envs]
    screens = np.empty((games, 210, 160), np.uint8)
    fields = screens.view("<u2")[:, FIELD][:, ::2]                   # (K, 80, 80), as screen_pixels reads them
    pixels = np.empty((games, D), np.uint8)
    previous = np.empty((games, D), np.uint8)
    kept = [([], [], [], []) for _ in range(games)]                  # each game's idx, turned_on, ups, rewards
    rng, ends = np.random.default_rng(0), np.arange(games + 1) * D
    colors = new_color_table()                                       # the same colours in every game

    def new_game(k, seed=None):
        envs[k].reset(seed=seed)
        ales[k].getScreen(screens[k])
        screen_pixels(screens[k], pixels[k])
        learn_colors(colors, pixels[k], screens[k], ales[k].getScreenRGB)
        previous[k] = colors.take(pixels[k])
        kept[k] = ([], [], [], [])

    for k in range(games):
        new_game(k, seed=k)
    emulator = ours = 0.0
    played = 0
    while played < steps:
        start = CLOCK()
        for k in range(games):
            ales[k].getScreen(screens[k])
        np.copyto(pixels.reshape(games, 80, 80), fields, casting="unsafe")
        image = colors.take(pixels)                                  # (K, 6400): 1 paddle or ball, 0 background
        if UNKNOWN_BYTE in image.tobytes():
            for k in range(games):
                learn_colors(colors, pixels[k], screens[k], ales[k].getScreenRGB)
            image = colors.take(pixels)
        flat = (image != previous).ravel().nonzero()[0]              # the changed pixels of all K games
        on = image.ravel().take(flat)
        previous = image
        bounds = flat.searchsorted(ends)                             # game k's pixels: flat[bounds[k]:bounds[k+1]]
        game = flat // D
        idx = flat - game * D
        S = np.zeros((games, len(flat)), np.float32)                 # h_k = sum of game k's signed rows of W1T
        S[game, np.arange(len(flat))] = SIGN.take(on)
        h = S @ W1T.take(idx, axis=0)
        np.maximum(h, 0, out=h)
        p_up = 1.0 / (1.0 + np.exp(-np.clip(h @ W2, -50, 50)))
        ups = (rng.random(games) < p_up).tolist()
        for k in range(games):
            idxs, turned_on, up, _ = kept[k]
            idxs.append(idx[bounds[k]:bounds[k + 1]])
            turned_on.append(on[bounds[k]:bounds[k + 1]])
            up.append(ups[k])
        middle = CLOCK()
        finished = []
        for k in range(games):
            reward, terminated, truncated = steps_of[k](UP if ups[k] else DOWN)
            kept[k][3].append(reward)
            if terminated or truncated:
                finished.append(k)
        end = CLOCK()
        for k in finished:                                           # (a new game's start is not timed)
            new_game(k)
        ours, emulator, played = ours + middle - start, emulator + end - middle, played + games
    return 1e6 * emulator / played, 1e6 * ours / played


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 8],
                    help="games in lockstep, comma-separated (default: 1,4,8)")
    ap.add_argument("--steps", type=int, default=16_000, help="agent steps per measurement (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all measurements (default: %(default)s)")
    args = ap.parse_args()
    weights = play_weights(init_model(200, np.random.default_rng(0)))
    print("| round | how the worker plays | emulator (us/step) | ours (us/step) | ours / emulator |")
    print("|---:|---|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        runs = [("play_episode, one game", lambda: one_game(weights, args.steps))]
        runs += [(f"{k} game{'s' * (k > 1)} in lockstep", lambda k=k: lockstep(weights, k, args.steps))
                 for k in args.games]
        for name, measure in runs:
            emulator, ours = measure()
            print(f"| {round_} | {name} | {emulator:.1f} | {ours:.1f} | {100 * ours / emulator:.1f}% |", flush=True)


if __name__ == "__main__":
    main()

"""--plain, the 2016 loop as written, against the fast trainer: the same games, the same updates; and
the same book-keeping (checkpoints, --resume, Ctrl-C); an unfinished batch is kept by each trainer for
itself, and one of the other trainer starts afresh."""
import csv
import os
import re
import shutil
import signal

import numpy as np
import pytest

import checkpoint
from conftest import ROOT, log_rows, run, saved, start, wait_for_rows
from pong_pg import init_model

SAME_IN_BOTH = ["episode", "score", "running_mean", "steps", "total_steps", "update"]   # all but the time


def logged(directory):
    return [{k: row[k] for k in SAME_IN_BOTH} for row in log_rows(directory)]


def assert_same_training(plain_dir, fast_dir, start):
    """The two runs' logs agree in every column but the time, and their weights and RMSProp caches
    agree to float32 rounding: the fast one's change of the weights since `start` (which it holds in
    float32) is the plain one's."""
    assert logged(plain_dir) == logged(fast_dir)
    plain, fast = saved(plain_dir), saved(fast_dir)
    assert plain["model"]["W1"].dtype == np.float64 and fast["model"]["W1"].dtype == np.float32
    assert plain["updates"] == fast["updates"] >= 1
    for k in ("W1", "W2"):
        moved_plain = plain["model"][k] - start[k]
        moved_fast = fast["model"][k].astype(np.float64) - start[k].astype(np.float32)
        np.testing.assert_array_equal(moved_plain != 0, moved_fast != 0)                 # the same weights moved
        np.testing.assert_allclose(moved_fast, moved_plain, rtol=0, atol=2e-3 * np.abs(moved_plain).max())
        np.testing.assert_allclose(fast["cache"][k], plain["cache"][k], rtol=0,
                                   atol=1e-4 * np.abs(plain["cache"][k]).max())


@pytest.mark.parametrize("preset", [[], ["--preset", "2016"], ["--entropy", "0.05"]],
                         ids=["defaults", "preset 2016", "entropy bonus"])
def test_the_plain_and_the_fast_trainer_play_the_same_games_and_make_the_same_updates(tmp_path, preset):
    """Same seed: the plain loop (RGB frames, float64, dense) and the fast trainer with one worker
    (palette screens, float32, sparse, a worker process) play the same 4 games step for step (the
    same scores and lengths) and make the same 2 updates."""
    flags = ["--episodes", 4, "--batch-size", 2, "--seed", 3, "--quiet", *preset]
    plain = run("--plain", *flags, "--checkpoint-dir", tmp_path / "plain")
    fast = run("--workers", 1, *flags, "--checkpoint-dir", tmp_path / "fast")
    assert plain.returncode == 0 and fast.returncode == 0, (plain.stderr, fast.stderr)
    assert "training the plain way" in plain.stdout and plain.stdout.count("update ") == 2
    start = {k: v.astype(np.float64) for k, v in init_model(200, np.random.default_rng(3)).items()}
    assert_same_training(tmp_path / "plain", tmp_path / "fast", start)


def test_an_unfinished_plain_batch_goes_on_in_plain_and_starts_afresh_in_the_fast_trainer(tmp_path):
    """A --plain run stopped mid-batch keeps its episodes: resumed by --plain they are replayed (the
    same next update as without the stop); resumed by the fast trainer the batch starts afresh, with
    one note, and the weights go on in float32."""
    flags = ["--batch-size", 2, "--seed", 4, "--quiet"]
    first = run("--plain", "--episodes", 3, *flags, "--checkpoint-dir", tmp_path / "plain")
    assert first.returncode == 0, first.stderr
    state = saved(tmp_path / "plain")
    assert state["batch"] is None and len(state["plain_batch"]) == 1 and state["updates"] == 1
    shutil.copytree(tmp_path / "plain", tmp_path / "fast")
    plain = run("--plain", "--resume", "--episodes", 1, "--quiet", "--checkpoint-dir", tmp_path / "plain")
    fast = run("--resume", "--workers", 1, "--episodes", 1, "--quiet", "--checkpoint-dir", tmp_path / "fast")
    assert plain.returncode == fast.returncode == 0, (plain.stderr, fast.stderr)
    assert "note" not in plain.stdout and "update 2: " in plain.stdout and " in 2 episodes" in plain.stdout
    assert saved(tmp_path / "plain")["plain_batch"] is None
    assert fast.stdout.count("note: ") == 2
    assert "float64 (a --plain run): training goes on in float32" in fast.stdout
    assert "the unfinished batch (1 episode(s)) was kept by the other trainer (--plain): it starts " \
           "afresh" in fast.stdout
    after = saved(tmp_path / "fast")
    assert (after["episode"], after["updates"], after["plain_batch"], after["batch"]["episodes"]) == (4, 1, None, 1)


def test_an_unfinished_fast_batch_is_dropped_by_plain_with_a_note(tmp_path):
    fast = run("--workers", 1, "--episodes", 3, "--batch-size", 2, "--quiet", "--checkpoint-dir", tmp_path)
    assert fast.returncode == 0, fast.stderr
    assert saved(tmp_path)["batch"]["episodes"] == 1
    plain = run("--plain", "--resume", "--episodes", 2, "--checkpoint-dir", tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "the unfinished batch (1 episode(s)) was kept by the other trainer (without --plain): it starts " \
           "afresh" in plain.stdout
    state = saved(tmp_path)
    assert (state["episode"], state["updates"], state["batch"]) == (5, 2, None)     # 2 new episodes, 1 update
    assert [int(r["episode"]) for r in log_rows(tmp_path)] == [1, 2, 3, 4, 5]


def test_ctrl_c_stops_the_plain_trainer_saves_and_resume_goes_on(tmp_path):
    proc = start("--plain", "--batch-size", 3, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "stopped by SIGINT" in out
    state = saved(tmp_path)
    assert state["episode"] == len(log_rows(tmp_path)) >= 1
    assert len(state["plain_batch"] or {}) == state["episode"] % 3
    again = run("--plain", "--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(log_rows(tmp_path)) == state["episode"] + 1


@pytest.mark.parametrize("flags", [["--workers", 2], ["--render"], ["--eval", 3]])
def test_plain_refuses_what_does_not_go_with_it_in_one_line(tmp_path, flags):
    result = run("--plain", *flags, "--checkpoint-dir", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"pong_pg.py: error: --plain trains in one process, without a "
                                                      f"window: {flags[0]} does not go with it")
    assert not (tmp_path / "pong_pg.pkl").exists()


def test_a_plain_run_exports_a_float32_agent(tmp_path):
    assert run("--plain", "--episodes", 1, "--checkpoint-dir", tmp_path).returncode == 0
    result = run("--export", tmp_path / "agent.pkl", "--checkpoint", tmp_path / "pong_pg.pkl")
    assert result.returncode == 0, result.stderr
    agent = checkpoint.load(tmp_path / "agent.pkl")
    assert agent["model"]["W1"].dtype == agent["model"]["W2"].dtype == np.float32
    with open(tmp_path / "log.csv") as f:
        assert len(list(csv.reader(f))) == 2


def test_the_readme_links_to_the_line_where_the_2016_program_starts():
    with open(os.path.join(ROOT, "README.md")) as f:
        line = int(re.search(r"\(pong_pg\.py#L(\d+)\)", f.read()).group(1))
    with open(os.path.join(ROOT, "pong_pg.py")) as f:
        assert f.read().splitlines()[line - 1].endswith(" 1. hyperparameters")


def test_a_damaged_unfinished_plain_batch_is_refused_in_one_line(tmp_path):
    assert run("--plain", "--episodes", 1, "--batch-size", 2, "--checkpoint-dir", tmp_path).returncode == 0
    state = saved(tmp_path)
    state["plain_batch"]["0"]["indptr"] = state["plain_batch"]["0"]["indptr"][:-5]     # steps lost
    checkpoint.save(tmp_path / "pong_pg.pkl", state)
    for flags in (["--plain"], []):
        result = run(*flags, "--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (f"pong_pg: error: checkpoint {tmp_path / 'pong_pg.pkl'} is damaged: its "
                                         f"unfinished batch does not decode")


@pytest.mark.parametrize("early, late, says", [
    ([], ["--late-lr", 0.01, "--late-decay-rate", 0.5, "--late-entropy", 0], "lr 0.01, decay 0.5, entropy bonus 0.0"),
    (["--entropy", 0], ["--late-entropy", 0.5], "entropy bonus 0.5")])     # a bonus that starts late
def test_the_late_settings_apply_from_the_same_update_in_both_trainers(tmp_path, early, late, says):
    """From the update after the running mean first passes 0, --late-lr, --late-decay-rate and
    --late-entropy apply: a run whose running mean is set above 0 switches after its next episode, in
    the plain and the fast trainer alike (the same updates from there), and the switch changes the
    updates."""
    first = run("--workers", 1, "--episodes", 2, "--batch-size", 2, "--seed", 5, "--quiet", "--checkpoint-dir",
                tmp_path / "fast")
    assert first.returncode == 0, first.stderr
    state = saved(tmp_path / "fast")
    state["running_mean"] = 5.0
    checkpoint.save(tmp_path / "fast" / "pong_pg.pkl", state)
    for copy in ("plain", "not late"):
        shutil.copytree(tmp_path / "fast", tmp_path / copy)
    flags = ["--resume", "--episodes", 4, "--quiet", *early]
    plain = run("--plain", *flags, *late, "--checkpoint-dir", tmp_path / "plain")
    fast = run("--workers", 1, *flags, *late, "--checkpoint-dir", tmp_path / "fast")
    not_late = run("--workers", 1, *flags, "--checkpoint-dir", tmp_path / "not late")
    assert plain.returncode == fast.returncode == not_late.returncode == 0, (plain.stderr, fast.stderr)
    for result in (plain, fast):
        assert f"the running mean passed 0 at episode 3; since update 2: {says}" in result.stdout
    assert_same_training(tmp_path / "plain", tmp_path / "fast", state["model"])
    assert (saved(tmp_path / "fast")["late_from"], saved(tmp_path / "fast")["updates"]) == (1, 3)
    assert saved(tmp_path / "not late")["late_from"] == 1                 # the switch is recorded regardless
    assert not np.allclose(saved(tmp_path / "not late")["model"]["W2"], saved(tmp_path / "fast")["model"]["W2"])

"""The trainer through its command line, on the real emulator, in temporary directories."""
import os
import signal

import numpy as np
import pytest

import checkpoint
import cli
import training_run
from cli import parse_args
from conftest import all_gone_soon, children_of, copy_run, gone, log_rows, run, saved, start, wait_for_rows, workers_of
from pong_pg import Hyperparameters, init_model


def test_help():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--resume", "--checkpoint-dir", "--episodes", "--seed", "--lr", "--batch-size", "--gamma",
                 "--decay-rate", "--hidden", "--save-every", "--workers"):
        assert flag in result.stdout


def test_train_then_resume_continues_numbering_log_and_state(tmp_path):
    first = run("--episodes", 3, "--batch-size", 2, "--workers", 2, "--checkpoint-dir", tmp_path)
    assert first.returncode == 0, first.stderr
    assert "episode 3: score" in first.stdout and "update 1:" in first.stdout
    state = saved(tmp_path)
    assert (state["episode"], state["updates"]) == (3, 1)
    assert state["batch"]["episodes"] == 1                 # the 3rd episode waits in the next batch
    # a checkpoint holds the weights, the RMSProp cache (float32, 5.1 MB each) and the unfinished
    # batch's sums of the pixels it touched (float32, 200 x 3 a pixel with the entropy bonus's sum,
    # 200 x 2 without): about 10 MB, at most 25.7
    touched, sums = len(state["batch"]["pixels"]), 2 + (state["hyper"]["entropy"] > 0)
    size = (tmp_path / "pong_pg.pkl").stat().st_size
    assert 0 < touched < 6400 and size <= 2 * 200 * 6400 * 4 + touched * sums * 200 * 4 + 100_000
    # the update was RMSProp's first step from the seed's initial weights: with an empty cache,
    # cache = (1 - decay) g^2, so each weight with a gradient moved by lr / sqrt(1 - decay) (for |g| >> eps)
    moved = np.abs(state["model"]["W1"] - init_model(200, np.random.default_rng(0))["W1"])
    full_step = Hyperparameters().lr / np.sqrt(1 - Hyperparameters().decay_rate)
    assert moved.max() <= full_step * 1.001
    assert np.median(moved[moved > 0]) == pytest.approx(full_step, rel=0.01)
    assert 0.05 < np.mean(moved > 0) < 0.9                 # the pixels the ball and paddles never visited stay
    rows = log_rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == [1, 2, 3]
    assert all(-21 <= int(r["score"]) <= 21 for r in rows)

    second = run("--resume", "--episodes", 2, "--checkpoint-dir", tmp_path)
    assert second.returncode == 0, second.stderr
    assert "from episode 4" in second.stdout and "episode 5: score" in second.stdout
    after = saved(tmp_path)
    assert (after["episode"], after["updates"]) == (5, 2)
    assert after["hyper"]["batch_size"] == 2              # hyperparameters come from the checkpoint
    rows = log_rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4, 5]
    steps = [int(r["steps"]) for r in rows]
    assert [int(r["total_steps"]) for r in rows] == list(np.cumsum(steps))
    assert after["total_steps"] == sum(steps)
    assert not np.array_equal(after["model"]["W1"], state["model"]["W1"])   # the second update moved it on


def test_fresh_start_over_an_existing_run_is_refused_and_keeps_it(tmp_path, one_episode_run):
    copy_run(one_episode_run, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    again = run("--episodes", 1, "--checkpoint-dir", tmp_path)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing", "wrong shape"])
def test_resume_from_an_unusable_checkpoint_gives_one_clear_line(tmp_path, one_episode_run, damage):
    path = tmp_path / "pong_pg.pkl"
    copy_run(one_episode_run, tmp_path)
    if damage == "missing":                          # a log without its checkpoint: not a new run
        path.unlink()
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x05 this is not a checkpoint")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong shape":
        state = checkpoint.load(path)
        state["model"]["W1"] = state["model"]["W1"][:, :100]
        checkpoint.save(path, state)
    before = path.read_bytes() if path.exists() else None
    result = run("--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("pong_pg: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (path.read_bytes() if path.exists() else None) == before


def test_the_overnight_command_starts_a_run_on_the_first_night_and_continues_it_after(tmp_path):
    """`python pong_pg.py --resume` every night: where the directory holds no run yet it starts one
    (saying so in one line), and from then on continues it."""
    first = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path / "new")
    assert first.returncode == 0, first.stderr
    assert f"no run in {tmp_path / 'new'} yet: starting a new one" in first.stdout
    second = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path / "new")
    assert second.returncode == 0, second.stderr
    assert "starting a new one" not in second.stdout and "from episode 2" in second.stdout
    assert saved(tmp_path / "new")["episode"] == 2 and len(log_rows(tmp_path / "new")) == 2


def test_resume_with_other_hidden_size_is_refused(tmp_path, one_episode_run):
    copy_run(one_episode_run, tmp_path)
    result = run("--resume", "--hidden", 16, "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 1 and "hidden units" in result.stderr


@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--lr", "0"], ["--lr", "nan"], ["--batch-size", "0"],
                                   ["--gamma", "1.5"], ["--gamma", "0"], ["--decay-rate", "1"], ["--entropy", "-0.1"],
                                   ["--hidden", "0"], ["--workers", "0"], ["--episodes", "-3"],
                                   ["--save-every", "x"], ["--seed", "-1"], ["--no-such-flag"]])
def test_invalid_flags_exit_2_before_any_work(tmp_path, flags):
    result = run(*flags, "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_one_worker_with_a_seed_is_reproducible(tmp_path):
    for name in ("a", "b"):
        result = run("--episodes", 2, "--batch-size", 1, "--workers", 1, "--seed", 7, "--checkpoint-dir",
                     tmp_path / name)
        assert result.returncode == 0, result.stderr
    a, b = saved(tmp_path / "a"), saved(tmp_path / "b")
    np.testing.assert_array_equal(a["model"]["W1"], b["model"]["W1"])
    np.testing.assert_array_equal(a["cache"]["W1"], b["cache"]["W1"])
    strip = [{k: v for k, v in row.items() if k != "wall_seconds"} for row in log_rows(tmp_path / "a")]
    assert strip == [{k: v for k, v in row.items() if k != "wall_seconds"} for row in log_rows(tmp_path / "b")]


def test_several_workers_make_well_formed_batches(tmp_path):
    result = run("--episodes", 9, "--batch-size", 4, "--workers", 3, "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = log_rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == list(range(1, 10))        # each episode once, none lost
    assert [int(r["update"]) for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1, 2]  # an update every 4 episodes
    state = saved(tmp_path)
    assert (state["episode"], state["updates"]) == (9, 2)
    assert state["batch"]["episodes"] == 1 and state["batch"]["steps"] == int(rows[-1]["steps"])
    assert state["total_steps"] == sum(int(r["steps"]) for r in rows)
    assert state["next_task"] == 9                                          # no task handed out twice


def test_ctrl_c_saves_and_exits_130_without_orphans(tmp_path):
    proc = start("--workers", 2, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 3)
    children = children_of(proc.pid)
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in out
    state = saved(tmp_path)
    assert state["episode"] == len(log_rows(tmp_path)) >= 3
    assert all(gone(pid) for pid in workers)             # joined before the trainer exits
    assert all_gone_soon(children)                        # the resource tracker follows


def test_preset_2016_trains_with_the_2016_settings_and_flags_still_win(tmp_path):
    result = run("--preset", "2016", "--episodes", 1, "--batch-size", 1, "--workers", 1, "--checkpoint-dir",
                 tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert "lr 0.0001" in result.stdout and "decay 0.99" in result.stdout and "per episode" in result.stdout
    hyper = saved(tmp_path / "a")["hyper"]
    assert (hyper["lr"], hyper["decay_rate"], hyper["standardize"], hyper["batch_size"], hyper["entropy"]) == \
        (1e-4, 0.99, "episode", 1, 0.0)
    assert parse_args(["--preset", "2016", "--lr", "5e-4"]).lr == 5e-4
    default = parse_args([])
    assert (default.lr, default.decay_rate, default.standardize, default.entropy) == (None,) * 4   # the defaults


def test_init_from_an_agent_file_starts_a_new_run_with_its_weights(tmp_path):
    """--init-from the shipped agent: a new run (log from episode 1) whose network is the agent's,
    with a fresh RMSProp cache (an agent file holds none)."""
    shipped = checkpoint.load(cli.SHIPPED_AGENT)["model"]
    result = run("--init-from", cli.SHIPPED_AGENT, "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    state = saved(tmp_path)
    assert state["episode"] == 1 and len(log_rows(tmp_path)) == 1 and state["updates"] == 0
    for k in ("W1", "W2"):
        np.testing.assert_array_equal(state["model"][k], shipped[k])   # no update yet: exactly its weights
        assert not state["cache"][k].any()
    assert state["init_from"] == str(cli.SHIPPED_AGENT) and state["warmup_from"] == 0
    assert int(log_rows(tmp_path)[0]["score"]) > 0                     # it plays as the agent does: it wins


def test_init_from_an_agent_file_warms_the_learning_rate_up(tmp_path):
    """An agent file holds no RMSProp cache: its first update steps each weight by at most lr (the warm-up,
    learning_rate()), not the lr / sqrt(1 - decay) = 10 lr of an empty cache at decay 0.99, which would jolt
    the trained agent; the warm-up goes on across --resume, and a damaged count is refused."""
    shipped = checkpoint.load(cli.SHIPPED_AGENT)["model"]
    result = run("--init-from", cli.SHIPPED_AGENT, "--episodes", 1, "--batch-size", 1, "--decay-rate", 0.99,
                 "--workers", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warms up" in result.stdout
    state = saved(tmp_path)
    assert (state["updates"], state["warmup_from"]) == (1, 0)
    moved = np.abs(state["model"]["W1"] - shipped["W1"])
    assert moved.max() <= Hyperparameters().lr * 1.001
    # about lr for most weights (RMSProp's eps shrinks the steps of the smallest gradients a little)
    assert 0.95 * Hyperparameters().lr <= np.median(moved[moved > 0]) <= Hyperparameters().lr * 1.001
    resumed = run("--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (saved(tmp_path)["updates"], saved(tmp_path)["warmup_from"]) == (2, 0)
    state["warmup_from"] = 7                         # after the run's 1 update: damaged
    checkpoint.save(tmp_path / "pong_pg.pkl", state)
    refused = run("--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert refused.returncode == 1 and "bad warmup_from" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_init_from_a_checkpoint_carries_its_rmsprop_cache_and_learns_on(tmp_path, one_episode_run):
    source = saved(one_episode_run)
    source["cache"] = {k: np.full_like(v, 1e-4) for k, v in source["model"].items()}
    checkpoint.save(tmp_path / "source.pkl", source)
    result = run("--init-from", tmp_path / "source.pkl", "--episodes", 2, "--batch-size", 2, "--workers", 1,
                 "--lr", 1e-2, "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    state = saved(tmp_path / "run")
    assert state["updates"] == 1 and state["hyper"]["lr"] == 1e-2 and state["hyper"]["batch_size"] == 2
    assert state["warmup_from"] is None               # a full cache: plain steps, no warm-up
    assert not np.array_equal(state["model"]["W1"], source["model"]["W1"])       # it learned from there
    # one RMSProp step from the file's cache: decay * 1e-4 + (1 - decay) g^2, so at least 0.9e-4
    # everywhere and exactly that where the batch did not reach (a fresh cache would give 0 there)
    assert state["cache"]["W1"].min() == pytest.approx(0.9e-4, rel=1e-6)
    assert (state["cache"]["W1"] > 0.9e-4 * (1 + 1e-3)).any() and state["cache"]["W2"].min() >= 0.9e-4


def test_the_start_seed_goes_on_through_init_from_and_export(tmp_path, one_episode_run):
    """The weights pictures show what training changed since the random weights an agent's training began
    from. A run from --init-from, the agent file it exports and a run from that file keep the first run's
    seed (0) for them: their own --seed would regenerate weights they never had."""
    result = run("--init-from", one_episode_run / "pong_pg.pkl", "--episodes", 1, "--workers", 1, "--seed", 5,
                 "--checkpoint-dir", tmp_path / "on")
    assert result.returncode == 0, result.stderr
    assert (saved(tmp_path / "on")["hyper"]["seed"], saved(tmp_path / "on")["start_seed"]) == (5, 0)
    result = run("--export", tmp_path / "agent.pkl", "--checkpoint-dir", tmp_path / "on")
    assert result.returncode == 0, result.stderr
    agent = training_run.load_agent(tmp_path / "agent.pkl")
    assert agent["start_seed"] == 0
    first = init_model(200, np.random.default_rng(0))["W1"]
    np.testing.assert_array_equal(training_run.initial_W1(agent), first)
    result = run("--init-from", tmp_path / "agent.pkl", "--episodes", 1, "--workers", 1, "--seed", 6,
                 "--checkpoint-dir", tmp_path / "again")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(training_run.initial_W1(saved(tmp_path / "again")), first)
    for unknown in (None, -1, "0", True, 2.0):     # unknown or damaged: the pictures show the weights as they are
        assert training_run.initial_W1(dict(agent, start_seed=unknown)) is None


@pytest.mark.parametrize("flags, says", [(["--init-from", "README.md"], "not a pong_pg checkpoint"),
                                         (["--init-from", "no-such.pkl"], "no-such.pkl"),
                                         (["--init-from", cli.SHIPPED_AGENT, "--hidden", 16], "hidden units"),
                                         (["--init-from", cli.SHIPPED_AGENT, "--resume"], "choose one")])
def test_init_from_refuses_what_cannot_start_a_run_before_writing_anything(tmp_path, flags, says):
    result = run(*flags, "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 12
    assert not (tmp_path / "run").exists()


def test_an_older_checkpoint_resumes_without_the_entropy_bonus_and_a_changed_one_drops_the_batch(tmp_path):
    """A checkpoint from before --entropy (lr 1e-3, no such setting, an unfinished batch of two sums)
    resumes with its lr and no bonus, whatever the defaults, and keeps its batch; resumed with --entropy,
    the batch summed without it is dropped, said once."""
    first = run("--lr", 1e-3, "--entropy", 0, "--episodes", 3, "--batch-size", 2, "--workers", 1,
                "--checkpoint-dir", tmp_path)
    assert first.returncode == 0, first.stderr
    state = saved(tmp_path)
    del state["hyper"]["entropy"]
    del state["hyper"]["late_lr"], state["hyper"]["late_decay_rate"], state["hyper"]["late_entropy"]  # from before
    del state["late_from"]                                                                             # them too
    checkpoint.save(tmp_path / "pong_pg.pkl", state)
    same = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert same.returncode == 0, same.stderr
    hyper = saved(tmp_path)["hyper"]
    assert "dropped" not in same.stdout and (hyper["entropy"], hyper["lr"]) == (0.0, 1e-3)
    assert (hyper["late_lr"], hyper["late_decay_rate"], hyper["late_entropy"], saved(tmp_path)["late_from"]) == \
        (None, None, None, None)
    assert saved(tmp_path)["updates"] == 2                      # the kept episode and the new one: an update
    run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)   # one episode waits again
    bonus = run("--resume", "--entropy", 0.05, "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert bonus.returncode == 0, bonus.stderr
    assert bonus.stdout.count("summed with other settings") == 1 and "entropy bonus 0.05" in bonus.stdout
    state = saved(tmp_path)
    assert (state["hyper"]["entropy"], state["batch"]["sums_W2"].shape[0], state["batch"]["episodes"]) == (0.05, 3, 1)
    weaker = run("--resume", "--entropy", 0.01, "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert weaker.returncode == 0 and "summed with other settings" not in weaker.stdout   # the bonus's sums fit
    assert (saved(tmp_path)["updates"], saved(tmp_path)["batch"]) == (state["updates"] + 1, None)


def test_the_late_settings_change_nothing_until_the_running_mean_passes_0(tmp_path):
    """--late-lr, --late-decay-rate and --late-entropy, the running mean below 0 throughout: the same updates, bit for
    bit, as without them (one worker, the same seed); the checkpoint records them, --resume follows
    them, and --preset 2016 turns them off."""
    flags = ["--workers", 1, "--episodes", 3, "--batch-size", 1, "--seed", 9, "--quiet"]
    without = run(*flags, "--checkpoint-dir", tmp_path / "without")
    late = run(*flags, "--late-lr", 1e-2, "--late-decay-rate", 0.99, "--late-entropy", 0,
               "--checkpoint-dir", tmp_path / "with")
    assert without.returncode == late.returncode == 0, (without.stderr, late.stderr)
    assert "; once the running mean passes 0: lr 0.01, decay 0.99, entropy bonus 0.0" in late.stdout
    assert "once" not in without.stdout
    a, b = saved(tmp_path / "without"), saved(tmp_path / "with")
    assert a["updates"] == b["updates"] == 3
    for part in ("model", "cache"):
        for k in ("W1", "W2"):
            np.testing.assert_array_equal(a[part][k], b[part][k])
    assert (b["hyper"]["late_lr"], b["hyper"]["late_decay_rate"], b["hyper"]["late_entropy"], b["late_from"]) == \
        (1e-2, 0.99, 0.0, None)
    assert (a["hyper"]["late_lr"], a["hyper"]["late_decay_rate"], a["hyper"]["late_entropy"]) == (None, None, None)
    resumed = run("--resume", "--episodes", 1, "--workers", 1, "--quiet", "--checkpoint-dir", tmp_path / "with")
    assert resumed.returncode == 0 and "once the running mean passes 0: lr 0.01, decay 0.99, entropy bonus 0.0" \
        in resumed.stdout
    off = run("--resume", "--preset", "2016", "--episodes", 1, "--workers", 1, "--quiet", "--checkpoint-dir",
              tmp_path / "with")
    assert off.returncode == 0 and "note: late_lr changes from 0.01 to None on resume" in off.stdout
    assert "once the running mean" not in off.stdout
    hyper = saved(tmp_path / "with")["hyper"]
    assert (hyper["late_lr"], hyper["late_decay_rate"], hyper["late_entropy"]) == (None, None, None)

"""--play, --record, --eval, --plot, --render on the real emulator."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import cli
import training_run
from conftest import PONG_PG, ROOT, log_rows, run, wait_for_rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real run: 2 episodes, a checkpoint after each, so the pictures are drawn too."""
    directory = tmp_path_factory.mktemp("run")
    result = run("--episodes", 2, "--batch-size", 1, "--save-every", 1, "--workers", 1, "--checkpoint-dir", directory)
    assert result.returncode == 0, result.stderr
    return directory


def png_size(path):
    with open(path, "rb") as f:
        data = f.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_pictures_are_drawn_while_training(trained):
    assert png_size(trained / "learning_curve.png") == (1200, 450)
    assert png_size(trained / "weights.png") == (20 * 82 + 2, 10 * 82 + 2)   # 200 tiles of 80x80


def test_plot_on_demand(trained, tmp_path):
    for name in ("pong_pg.pkl", "log.csv"):
        shutil.copy(trained / name, tmp_path / name)
    result = run("--plot", "--checkpoint-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert png_size(tmp_path / "learning_curve.png") == (1200, 450)
    assert png_size(tmp_path / "weights.png") == (1642, 822)


@pytest.mark.parametrize("suffix", ["mp4", "gif"])
def test_record_writes_a_video_a_decoder_reads_back(trained, tmp_path, suffix):
    import av
    video = tmp_path / f"agent.{suffix}"
    result = run("--record", video, "--max-steps", 60, "--checkpoint-dir", trained)
    assert result.returncode == 0, result.stderr
    assert "recording:" in result.stdout and f"wrote {video}: 60 frames" in result.stdout
    with av.open(str(video)) as container:
        frames = list(container.decode(video=0))
    if suffix == "mp4":
        assert len(frames) == 60
    else:                                          # GIF merges identical consecutive frames
        assert 45 <= len(frames) <= 60
    assert (frames[0].width, frames[0].height) == (480, 630)
    image = frames[30].to_ndarray(format="rgb24")
    assert image.std() > 5                         # a picture of the game, not a blank frame


def test_record_without_the_encoder_says_how_to_install_it(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)    # as if PyAV were not installed
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--record", str(tmp_path / "a.mp4"), "--checkpoint-dir", str(trained)])
    assert exit_.value.code == 1
    assert "pip install av" in capsys.readouterr().err
    assert not (tmp_path / "a.mp4").exists()


def test_eval_prints_statistics_for_both_policies(trained):
    result = run("--eval", 2, "--checkpoint-dir", trained)
    assert result.returncode == 0, result.stderr
    assert "eval 4/4" in result.stdout
    for mode in ("sampled", "greedy"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{mode} policy: mean score"))
        mean = float(line.split("mean score ")[1].split()[0])
        assert -21 <= mean <= 21
        assert "95% CI" in line and "games (" in line and "points" in line


def test_confidence_interval():
    from watch import confidence_95
    scores = np.array([1.0, 3.0, 5.0])
    assert abs(confidence_95(scores) - 4.303 * 2 / np.sqrt(3)) < 1e-9
    assert abs(confidence_95(np.arange(100.0)) - 1.96 * np.std(np.arange(100.0), ddof=1) / 10) < 1e-9


@pytest.mark.parametrize("mode", ["--eval", "--play", "--record", "--plot"])
def test_watching_without_a_checkpoint_or_with_a_damaged_one(tmp_path, mode):
    flags = {"--eval": ["--eval", "1", "--workers", "1"], "--play": ["--play", "--episodes", "1", "--max-steps", "5"],
             "--record": ["--record", tmp_path / "x.gif", "--max-steps", "5"], "--plot": ["--plot"]}[mode]
    run_dir = tmp_path / "run"
    result = run(*flags, "--checkpoint-dir", run_dir)
    if os.path.exists(cli.SHIPPED_AGENT):
        assert "using the shipped agent" in result.stdout    # no run of one's own: the shipped agent plays
    else:
        assert result.returncode == 1 and "no checkpoint at" in result.stderr and "train first" in result.stderr
    run_dir.mkdir(exist_ok=True)
    (run_dir / "pong_pg.pkl").write_bytes(b"\x80\x04garbage")
    result = run(*flags, "--checkpoint-dir", run_dir)
    assert result.returncode == 1
    assert result.stderr.startswith("pong_pg: error: checkpoint") and "damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_play_without_a_display_says_what_to_do(trained):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    for flags in (["--play", "--checkpoint-dir", str(trained)], ["--render", "--checkpoint-dir", str(trained / "new")]):
        result = subprocess.run([sys.executable, PONG_PG, *flags], capture_output=True, text=True, env=env,
                                timeout=60, cwd=ROOT)
        assert result.returncode == 1
        assert "needs a display" in result.stderr and "--record" in result.stderr and "xvfb-run" in result.stderr


def test_the_shipped_agent_is_used_when_there_is_no_run_yet(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "SHIPPED_AGENT", str(trained / "pong_pg.pkl"))
    cli.main(["--eval", "1", "--workers", "1", "--checkpoint-dir", str(tmp_path / "empty")])
    out = capsys.readouterr().out
    assert "no run of your own" in out and "using the shipped agent" in out and "greedy policy: mean" in out


def test_conflicting_modes_are_refused(tmp_path):
    for flags in (["--play", "--eval", "2"], ["--plot", "--resume"], ["--record", "a.avi"],
                  ["--eval", "1", "--render"]):
        result = run(*flags, "--checkpoint-dir", tmp_path)
        assert result.returncode == 2 and "error" in result.stderr


@pytest.fixture(scope="module")
def display_env():
    """The environment of a process with a real (virtual) display: an Xvfb server on a free display
    number, for this module's window tests. CI installs Xvfb; elsewhere the tests skip without it."""
    if shutil.which("Xvfb") is None:
        pytest.skip("no display server: install Xvfb (apt-get install xvfb) to test the window")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24", "-nolisten",
                               "tcp"], pass_fds=[write_end], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        display = f.readline().strip()             # Xvfb writes its display number once it is ready
    if not display:
        server.kill()
        pytest.skip("Xvfb could not start a virtual display")
    yield dict(os.environ, DISPLAY=f":{display}")
    server.terminate()
    server.wait()


@pytest.mark.parametrize("annotate", [[], ["--annotate"]])
def test_play_in_a_window_under_xvfb(trained, annotate, display_env):
    result = subprocess.run([sys.executable, PONG_PG, "--play", *annotate, "--episodes", "2", "--max-steps", "20",
                             "--checkpoint-dir", str(trained)], capture_output=True, text=True, env=display_env,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "game 1:" in result.stdout and "game 2:" in result.stdout and "20 steps" in result.stdout
    assert "ALSA" not in result.stderr                       # no sound card: SDL is asked for no audio


def test_render_while_training_shows_one_game_and_the_others_keep_training(tmp_path, display_env):
    proc = subprocess.Popen([sys.executable, PONG_PG, "--render", "--workers", "2", "--checkpoint-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=display_env, cwd=ROOT)
    wait_for_rows(tmp_path, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(log_rows(tmp_path)) >= 3            # the window plays at 15 steps/s; the other worker trains


def test_export_writes_the_weights_alone_and_they_can_be_watched(trained, tmp_path):
    agent = tmp_path / "agent.pkl"
    result = run("--export", agent, "--checkpoint-dir", trained)
    assert result.returncode == 0, result.stderr
    state = training_run.load_agent(agent)
    assert "cache" not in state and "batch" not in state and state["model"]["W1"].shape == (200, 6400)
    assert agent.stat().st_size < 6_000_000
    np.testing.assert_array_equal(state["model"]["W1"], training_run.load_state(trained / "pong_pg.pkl").model["W1"])
    result = run("--eval", 1, "--workers", 1, "--checkpoint", agent, "--checkpoint-dir", tmp_path / "none")
    assert result.returncode == 0 and "greedy policy: mean score" in result.stdout


def test_annotated_video_shows_for_each_step_what_the_network_saw_and_did(tmp_path):
    """One frame per agent step; the panel's difference frame and P(UP) bar are the ones the policy
    computed at that step (the same game played again with the same seed gives play_episode's own)."""
    import av
    from PIL import Image

    import watch
    from pong_pg_fast import play_episode, play_weights, policy_forward_sparse
    from preprocess import difference_values
    from training_run import load_agent
    from workers import make_env, task_rng

    steps = 40
    for suffix in ("mp4", "gif"):
        result = run("--record", tmp_path / f"a.{suffix}", "--annotate", "--max-steps", steps, "--seed", 3,
                     "--checkpoint", cli.SHIPPED_AGENT)
        assert result.returncode == 0, result.stderr
    with av.open(str(tmp_path / "a.mp4")) as container:
        mp4 = list(container.decode(video=0))
    assert len(mp4) == steps and (mp4[0].width, mp4[0].height) == (480 + watch.PANEL_WIDTH, 630)

    weights = play_weights(load_agent(cli.SHIPPED_AGENT)["model"])
    env = make_env()
    env.reset(seed=3)
    episode = play_episode(env, weights, task_rng(3 + watch.EVAL_SEED_OFFSET, 0), max_steps=steps)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == steps
    reference = np.array([watch.PANEL_COLORS[name] for name in ("zero", "appeared", "gone")], float)
    checked = 0
    for t in (5, 17, 33):
        gif.seek(t)
        panel = np.asarray(gif.convert("RGB"))[:, 480:]
        idx = episode.idx[episode.indptr[t]:episode.indptr[t + 1]].astype(np.intp)
        vals = episode.vals[episode.indptr[t]:episode.indptr[t + 1]]
        expected = np.zeros(6400, int)
        expected[idx] = np.where(vals > 0, 1, 2)              # 1 appeared, 2 gone
        centres = panel[watch.DIFF_TOP + 1:watch.DIFF_TOP + 240:3, watch.PANEL_MARGIN + 1:watch.PANEL_MARGIN + 240:3]
        shown = np.linalg.norm(centres.reshape(6400, 1, 3) - reference, axis=2).argmin(axis=1)
        np.testing.assert_array_equal(shown, expected)
        checked += len(idx)
        p_up, _ = policy_forward_sparse(weights, idx, difference_values(vals > 0))
        bar = panel[watch.BAR_TOP + watch.BAR_HEIGHT // 2, watch.PANEL_MARGIN:watch.PANEL_MARGIN + watch.BAR_WIDTH]
        filled = np.linalg.norm(bar - np.array(watch.PANEL_COLORS["bar"]), axis=1) < 40
        assert abs(filled.sum() - round(p_up * watch.BAR_WIDTH)) <= 2, (t, p_up, filled.sum())
    assert checked > 0


def test_plot_writes_the_weights_forming_one_frame_per_refresh(trained, tmp_path):
    from PIL import Image

    import watch
    shutil.copytree(trained, tmp_path / "run")
    refreshes = sorted(os.listdir(tmp_path / "run" / watch.HISTORY_DIR))
    assert refreshes == ["episode_000000001.png", "episode_000000002.png"]   # the first checkpoint, the end
    result = run("--plot", "--checkpoint-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    animation = Image.open(tmp_path / "run" / watch.ANIMATION_FILE)
    assert animation.n_frames == len(refreshes)
    assert sum(os.path.getsize(tmp_path / "run" / watch.HISTORY_DIR / name) for name in refreshes) < 200_000


def test_the_weights_picture_shows_what_training_changed(trained):
    """Tiles are drawn from W1 minus the seed's initial weights: before any update, all mid-gray."""
    import watch
    from pong_pg import init_model
    W1 = init_model(200, np.random.default_rng(0))["W1"]
    untrained = watch.weights_grid(W1, W1)
    assert set(np.unique(untrained)) == {round(0.1 * 255), round(0.5 * 255)}   # gaps and unchanged weights
    raw = watch.weights_grid(W1)
    assert len(np.unique(raw)) > 100                                            # the initial noise


def test_annotate_needs_play_or_record_and_a_writable_path(tmp_path):
    result = run("--annotate", "--checkpoint-dir", tmp_path)
    assert result.returncode == 2 and "--annotate goes with --play or --record" in result.stderr
    missing = tmp_path / "no such folder" / "a.mp4"
    result = run("--record", missing, "--annotate", "--max-steps", 5, "--checkpoint", cli.SHIPPED_AGENT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("pong_pg: error: cannot write") and len(result.stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)

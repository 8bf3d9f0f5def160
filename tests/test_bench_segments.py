"""bench/segments.py, which carries the long studies (bench/night.py, bench/plateau.py) across machines:
a segment whose trainer fails keeps nothing."""
import filecmp
import os
import shutil
import sys

import pytest

import cli
import training_run
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

from segments import SegmentFailed, segment_logs, train_segment

from watch import read_log


def test_a_segment_whose_workers_cannot_start_keeps_nothing(tmp_path, monkeypatch):
    # As on a machine where ale-py is not installed: the trainer starts, saves its first checkpoint,
    # then its workers die. Its agent (untrained since the start) must not replace the kept one, and no
    # empty log may count as a segment.
    keep, broken, agent = tmp_path / "keep", tmp_path / "no_ale", tmp_path / "agents" / "agent.pkl"
    for directory in (keep, broken, agent.parent):
        directory.mkdir()
    shutil.copyfile(cli.SHIPPED_AGENT, agent)
    (keep / "seg1.csv").write_text("episode,score,running_mean,steps,total_steps,update,wall_seconds\n"
                                   "1,21,21.0,3000,3000,0,1.0\n")
    (broken / "ale_py.py").write_text("raise ImportError(\"No module named 'ale_py'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    with pytest.raises(SegmentFailed, match=r"exit code 1 after 0 episodes"):
        train_segment(str(keep), str(tmp_path / "run"), ["--workers", "1"], str(agent), minutes=1)
    assert filecmp.cmp(agent, cli.SHIPPED_AGENT, shallow=False)
    assert segment_logs(str(keep)) == [str(keep / "seg1.csv")]
    assert sorted(os.listdir(keep)) == ["seg1.csv"]


def test_a_segment_stopped_at_its_deadline_is_kept(tmp_path):
    # The other end: the trainer stopped by the SIGINT train_segment sends (exit code 130) saved its
    # checkpoint, so its log becomes seg1.csv and its agent the agent file, outside keep.
    keep, agent_file = tmp_path / "keep", tmp_path / "agents" / "agent.pkl"
    train_segment(str(keep), str(tmp_path / "run"), ["--workers", "1"], str(agent_file), minutes=0.2, evaluate=False)
    assert segment_logs(str(keep)) == [str(keep / "seg1.csv")] and os.listdir(keep) == ["seg1.csv"]
    episodes = read_log(str(keep / "seg1.csv"))
    agent = training_run.load_agent(str(agent_file))
    assert episodes and agent["episode"] == len(episodes) and "cache" not in agent

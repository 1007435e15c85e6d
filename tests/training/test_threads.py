"""The CPU thread policy (vaeflow_cli.runtime.threads): the auto count, the load governor's arithmetic and
decisions on a scripted clock and load, and, in a fresh interpreter beside a real busy process,
that an auto count goes down and a forced one does not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vaeflow_cli.runtime import threads
from vaeflow_cli.runtime.threads import FIRST_LOOK_S, INTERVAL_S, LoadGovernor


class Script:
    """A clock, the busy CPU seconds of the cores and this process's own, advanced by hand."""

    def __init__(self):
        self.t = 0.0
        self.busy = 0.0
        self.own = 0.0

    def advance(self, seconds: float, *, ours: float, others: float) -> None:
        """``seconds`` of wall time with ``ours`` and ``others`` cores busy."""
        self.t += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds


def governor(s: Script, ceiling: int = 2, cores: int = 2):
    applied = []
    g = LoadGovernor(ceiling, applied.append, cores=set(range(cores)), clock=lambda: s.t, busy=lambda: s.busy, own=lambda: s.own)
    return g, applied


def test_a_busy_neighbour_lowers_the_count_at_the_first_look_and_it_comes_back_after_two_quiet_looks():
    s = Script()
    g, applied = governor(s)
    s.advance(FIRST_LOOK_S / 2, ours=1.0, others=1.0)
    assert g.tick() == 2 and applied == []  # not time to look yet
    s.advance(FIRST_LOOK_S / 2, ours=1.0, others=1.0)
    assert g.tick() == 1 and applied == [1]  # one core of two kept busy by another process
    s.advance(INTERVAL_S, ours=1.0, others=1.0)
    assert g.tick() == 1 and applied == [1]
    s.advance(INTERVAL_S, ours=1.0, others=0.0)  # the neighbour stopped: one quiet look is not enough
    assert g.tick() == 1 and applied == [1]
    s.advance(INTERVAL_S, ours=1.0, others=0.0)
    assert g.tick() == 2 and applied == [1, 2] and g.changes == 2


def test_a_light_neighbour_or_a_quiet_machine_keeps_every_thread():
    s = Script()
    g, applied = governor(s)
    for others in (0.0, 0.3, 0.45, 0.0):
        s.advance(INTERVAL_S, ours=2.0, others=others)
        assert g.tick() == 2
    assert applied == [] and g.changes == 0


def test_the_count_is_what_the_others_leave_free_rounded_at_least_one_at_most_the_ceiling():
    s = Script()
    g, _ = governor(s, ceiling=8, cores=8)
    assert [g.target(o) for o in (0.0, 0.49, 0.51, 1.0, 2.6, 7.9, 30.0)] == [8, 8, 7, 7, 5, 1, 1]
    g, _ = governor(s, ceiling=4, cores=8)  # two torchrun processes on 8 cores: a share of 4 each
    assert [g.target(o) for o in (0.0, 4.0, 5.0)] == [4, 4, 3]


def test_an_unreadable_load_changes_nothing():
    s = Script()
    applied = []
    g = LoadGovernor(2, applied.append, cores={0, 1}, clock=lambda: s.t, busy=lambda: None, own=lambda: s.own)
    for _ in range(3):
        s.advance(INTERVAL_S, ours=0.0, others=2.0)
        assert g.tick() == 2
    assert applied == []


def test_busy_seconds_reads_the_cores_of_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  300 30 60 9000 5 3 3 0 0 0\n"
        "cpu0 100 10 20 3000 1 1 1 0 0 0\n"
        "cpu1 100 10 20 3000 2 1 1 0 0 0\n"
        "cpu2 100 10 20 3000 2 1 1 3 0 0\n"
        "intr 12345 0 0\nctxt 999\n"
    )
    hz = os.sysconf("SC_CLK_TCK")
    assert threads.busy_seconds({0, 2}, path=str(stat)) == pytest.approx((132 + 135) / hz)  # user nice system irq softirq steal
    assert threads.busy_seconds(None, path=str(stat)) == pytest.approx((132 + 132 + 135) / hz)
    assert threads.busy_seconds({7}, path=str(stat)) is None
    assert threads.busy_seconds(None, path=str(tmp_path / "missing")) is None


PROBE = textwrap.dedent(
    """
    import sys, time
    import torch
    from vaeflow_cli.runtime import threads
    from vaeflow_cli.runtime.devices import set_threads
    before = set_threads(int(sys.argv[1]))
    deadline = time.monotonic() + (8 if int(sys.argv[1]) == 0 else 3)
    while time.monotonic() < deadline and torch.get_num_threads() == before:
        time.sleep(0.05)  # this process idles: the busy core is the other process's
        threads.tick()
    print(before, torch.get_num_threads())
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or threads.usable_cores() < 2, reason="the governor reads Linux's /proc/stat and needs 2 cores"
)
@pytest.mark.parametrize("setting", [0, 2])
def test_a_fresh_process_beside_a_busy_one_lowers_an_auto_count_and_keeps_a_forced_one(setting):
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        r = subprocess.run([sys.executable, "-c", PROBE, str(setting)], capture_output=True, text=True, timeout=120)
    finally:
        spinner.kill()
        spinner.wait()
    assert r.returncode == 0, r.stderr
    before, after = map(int, r.stdout.split())
    if setting == 0:
        assert before == threads.usable_cores() and after < before, (before, after, r.stderr)
    else:
        assert before == after == 2, (before, after)


@pytest.mark.parametrize(
    "text",
    [
        "cpu  1 2 3 4\ncpu0 1 2 x 4 0 0 0\n",  # a field that is not a number
        "cpu  1 2 3 4\ncpuX 1 2 3 4 0 0 0\n",  # a CPU that is not numbered
        "\n\n",  # empty lines only
        "cpu0 1 2\n",  # too few fields
        "cpu0 -1 2 3 4 0 0 0\n",  # a negative tick count
        "intr 1 2 3\n",  # no CPU line at all
        "",
    ],
)
def test_a_malformed_proc_stat_reads_as_unknown_and_an_auto_count_stays_fixed(tmp_path, monkeypatch, text):
    """A /proc/stat that is not the kernel's layout (a container's fake one, a truncated read) is
    an unknown load, like an unreadable one: no governor, and nothing raises, neither when an auto
    count is chosen nor at a later look."""
    import torch

    from vaeflow_cli.runtime.devices import set_threads

    stat = tmp_path / "stat"
    stat.write_text(text)
    monkeypatch.setattr(threads, "PROC_STAT", str(stat))
    assert threads.busy_seconds() is None and threads.busy_seconds({0}) is None
    assert set_threads(0, log=False) == threads.resolve_threads(0) == torch.get_num_threads()
    assert threads.installed() is None
    threads.tick()
    g = LoadGovernor(2, lambda n: None, cores={0, 1})  # a governor installed before the file went bad
    g._next = 0.0
    assert g.tick() == 2


@pytest.mark.parametrize("value", ["abc", "", "0", "-2", "1.5"])
def test_a_malformed_local_world_size_is_one_process_and_says_so(monkeypatch, capsys, value):
    """The count used is the count printed, and the variable's problem is one warning line."""
    from vaeflow_cli.runtime import devices

    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    monkeypatch.setattr(devices, "_warned", set())
    monkeypatch.setattr(devices, "_applied_threads", None)
    n = devices.set_threads(0)
    err = capsys.readouterr().err
    assert n == threads.usable_cores()
    assert f"auto: {threads.usable_cores()} usable cores / 1 local process" in err and "local processes" not in err
    warnings = [line for line in err.splitlines() if line.startswith("vaeflow: warning:")]
    assert len(warnings) == 1 and f"LOCAL_WORLD_SIZE={value!r} is not a whole number >= 1" in warnings[0]
    devices.set_threads(0)
    assert "warning" not in capsys.readouterr().err  # once per process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.local_processes() == (2, None) and threads.resolve_threads(0) == max(1, threads.usable_cores() // 2)


def test_a_python_caller_gets_its_thread_count_and_governor_back(tiny_config, tmp_path, capsys):
    """train_phase, evaluate_run, run_timing and the commands run in-process set the run's thread
    policy while they run; afterwards the caller's count holds and no governor is left to change
    it (conftest's autouse fixture starts each test at 2 threads and no governor)."""
    import torch
    from conftest import call_main

    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.evaluation.evaluate import evaluate_run
    from vaeflow_cli.runtime.devices import set_threads
    from vaeflow_cli.runtime.threads import callers_threads
    from vaeflow_cli.training.loop import train_phase
    from vaeflow_cli.training.timing import run_timing

    mine = LoadGovernor(1, lambda n: None, cores={0})
    threads.install(mine)
    torch.set_num_threads(1)
    cfg = config_mod.resolve(tiny_config, ["train.vae.epochs=1", "train.threads=0"])
    train_phase(cfg, tmp_path / "run", "vae", progress=False)
    assert threads.installed() is mine and torch.get_num_threads() == 1
    threads.install(None)
    evaluate_run(tmp_path / "run", metrics=["bpd"])
    assert threads.installed() is None and torch.get_num_threads() == 1
    assert call_main(["sample", "--run", tmp_path / "run", "--n", "2", "--out", tmp_path / "s.png"], capsys)[0] == 0
    assert threads.installed() is None and torch.get_num_threads() == 1
    run_timing(cfg, steps=1, warmup=1, batch_size=8, threads=0)
    assert threads.installed() is None and torch.get_num_threads() == 1
    with pytest.raises(RuntimeError):
        with callers_threads():
            set_threads(0)
            raise RuntimeError("the block failed")
    assert threads.installed() is None and torch.get_num_threads() == 1

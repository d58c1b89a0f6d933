"""Kill -9 loops (llmos.crashloop): 20 kernels in a row killed at random moments while
three durable agents work (a generation, a tool call and a memory write each turn), then
one kernel that runs them to their end. Nothing acknowledged is lost, nothing recorded
runs again; only the step a kernel died inside may (counted apart). The bench runs 100
cycles on the real model (bench/reliability.py)."""

from __future__ import annotations

from pathlib import Path

from llmos.crashloop import crash_loop

CYCLES = 20


def test_kill_9_loop_loses_nothing_and_runs_nothing_recorded_twice(tmp_path: Path) -> None:
    report = crash_loop(tmp_path / "home", tmp_path / "work", cycles=CYCLES, agents=3, turns=40, seed=12)

    assert len(report.kill_delays_s) == CYCLES
    assert report.working_kernels >= CYCLES // 3  # kernels died in the middle of work, not before it
    assert report.processes_lost == 0 and report.processes_ok == 3
    assert report.writes_acknowledged == 3 * 40
    assert report.writes_lost == 0 and report.writes_duplicated == 0
    for name, rerun in (("generations", report.generations), ("tool calls", report.tool_calls)):
        assert rerun.distinct == 3 * 40, name
        assert rerun.again == 0, f"{name} recorded before a kill ran again: {rerun}"
        assert rerun.killed_inside <= CYCLES * 3, name  # at most one per agent per kill
        assert rerun.total == rerun.distinct + rerun.killed_inside, name

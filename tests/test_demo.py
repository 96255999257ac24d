"""The embedded demo shows learning on every task type (issue 15 item 16): a first-time user must not read a
task stuck at 0 % as "training does not work". Slow: the whole demo, ~1.5 min on 2 cores."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_demo_every_task_type_learns(tmp_path):
    from sftlab.demo import run_demo

    table = run_demo(tmp_path / "demo")
    assert len(table) == 6
    assert all(row["before"] <= 0.1 for row in table.values())  # the base model knows none of it
    below = {task: row["after"] for task, row in table.items() if row["after"] < 0.8}
    assert not below, f"task types below 80 % exact match after the demo's training: {below}"
    assert all(row["stopped_after"] == 1.0 for row in table.values())  # every reply ends its turn

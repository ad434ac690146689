"""Finding and reading a worker's cgroup OOM-kill counter (v2 memory.events, v1 oom_control)."""

from __future__ import annotations

from pathlib import Path

from workers.oom import OomKills, counter_file, read_oom_kills


def _host(tmp_path: Path, cgroup_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "cgroup"
    proc.write_text(cgroup_lines)
    root = tmp_path / "fs"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return proc, root


def test_cgroup_v2_memory_events(tmp_path):
    events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    proc, root = _host(tmp_path, "0::/workers/w1\n", {"workers/w1/memory.events": events})
    path = counter_file(proc, root)
    assert path == root / "workers/w1/memory.events"
    assert read_oom_kills(path) == 2


def test_cgroup_v1_memory_hierarchy_on_a_hybrid_host(tmp_path):
    lines = "9:name=systemd:/\n4:memory:/box/w1\n1:cpu,cpuacct:/\n0::/\n"
    control = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"
    proc, root = _host(tmp_path, lines, {"memory/box/w1/memory.oom_control": control})
    path = counter_file(proc, root)
    assert path == root / "memory/box/w1/memory.oom_control"
    assert read_oom_kills(path) == 5


def test_no_memory_cgroup_means_no_counter(tmp_path):
    proc, root = _host(tmp_path, "0::/\n", {})
    assert counter_file(proc, root) is None
    assert OomKills(proc, root).rose() is False
    assert counter_file(tmp_path / "missing", root) is None


def test_a_rise_is_seen_once_and_only_against_a_baseline(tmp_path):
    proc, root = _host(tmp_path, "0::/w\n", {"w/memory.events": "oom_kill 1\n"})
    kills = OomKills(proc, root)  # kills before the worker started are not its children's
    assert kills.rose() is False
    (root / "w/memory.events").write_text("oom_kill 2\n")
    assert kills.rose() is True
    assert kills.rose() is False  # spent: a later SIGKILL is not the OOM killer's
    # Moved to a cgroup never seen: no baseline, so no claim.
    proc.write_text("0::/v\n")
    (root / "v").mkdir()
    (root / "v/memory.events").write_text("oom_kill 7\n")
    assert kills.rose() is False
    (root / "v/memory.events").write_text("oom_kill 8\n")
    assert kills.rose() is True

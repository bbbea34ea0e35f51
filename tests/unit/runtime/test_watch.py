"""The config file watcher (proxy.runtime.watch): ConfigMap symlink swaps, editor renames, half-written files,
debounce. Polls are driven one at a time (``FileWatcher.poll``), so nothing here waits on a clock except
the one test of the running loop, which waits for its events."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from proxy.runtime.watch import ChangeDetector, FileWatcher, read_state, snapshot
from support.configmap import ConfigMapDir
from support.waiting import eventually


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


def watcher_for(*paths: Path, enabled: list[bool] | None = None) -> tuple[FileWatcher, Recorder]:
    recorder = Recorder()
    flag = enabled if enabled is not None else [True]
    watched = [str(p) for p in paths]
    return FileWatcher(lambda: watched, recorder, interval=lambda: 0.01, enabled=lambda: flag[0]), recorder


async def polls(watcher: FileWatcher, n: int) -> list[bool]:
    return [await watcher.poll() for _ in range(n)]


def test_a_change_counts_once_it_reads_the_same_twice_in_a_row():
    a = (("f", read_state("/nonexistent/a")),)
    detector = ChangeDetector(a)
    b = (("f", read_state(__file__)),)
    assert detector.observe(a) is False
    assert detector.observe(b) is False  # seen once: might be half-written
    assert detector.observe(b) is True  # the same again: settled
    assert detector.observe(b) is False  # and it is the new baseline


async def test_an_in_place_edit_triggers_one_reload(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()  # baseline
    assert await polls(watcher, 2) == [False, False]
    config.write_text("a: 2\n")
    assert await polls(watcher, 3) == [False, True, False]
    assert reloads.calls == 1


async def test_a_half_written_file_is_not_acted_on_until_it_stops_changing(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    config.write_text("listen: 127.0.0.1:1\nupstream: http://12")  # the writer is mid-way
    assert await watcher.poll() is False
    config.write_text("listen: 127.0.0.1:1\nupstream: http://127.0.0.1:3\n")  # and done
    assert await watcher.poll() is False  # differs from the half-written read: still settling
    assert await watcher.poll() is True
    assert reloads.calls == 1


async def test_a_burst_of_writes_between_polls_is_one_reload(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 0\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    for i in range(1, 20):
        config.write_text(f"v: {i}\n")
    assert await polls(watcher, 4) == [False, True, False, False]
    assert reloads.calls == 1


async def test_an_editor_save_by_rename_is_seen(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    tmp = tmp_path / ".config.yaml.swp"
    tmp.write_text("v: 2\n")
    os.replace(tmp, config)
    assert await polls(watcher, 2) == [False, True]
    assert reloads.calls == 1


async def test_a_configmap_update_by_data_symlink_swap_is_seen(tmp_path):
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write({"config.yaml": "v: 1\n", "other.yaml": "x\n"})
    config = cm.path("config.yaml")
    inode_before = os.stat(config).st_ino
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    cm.write({"config.yaml": "v: 2\n", "other.yaml": "x\n"})
    assert config.is_symlink() and os.readlink(config) == "..data/config.yaml"  # the link never changed
    assert os.stat(config).st_ino != inode_before
    assert await polls(watcher, 3) == [False, True, False]
    assert reloads.calls == 1
    assert config.read_text() == "v: 2\n"


async def test_a_configmap_sync_with_identical_data_or_a_touch_is_not_a_change(tmp_path):
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write({"config.yaml": "v: 1\n"})
    watcher, reloads = watcher_for(cm.path("config.yaml"))
    await watcher.poll()
    cm.write({"config.yaml": "v: 1\n"})  # new ..data directory, same content
    os.utime(cm.path("config.yaml"))
    assert await polls(watcher, 3) == [False, False, False]
    assert reloads.calls == 0


async def test_a_secret_file_in_its_own_volume_is_watched_too(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    secrets = ConfigMapDir(tmp_path / "secret")
    secrets.write({"client-secret": "one\n"})
    watcher, reloads = watcher_for(config, secrets.path("client-secret"))
    await watcher.poll()
    secrets.write({"client-secret": "two\n"})
    assert await polls(watcher, 2) == [False, True]
    assert reloads.calls == 1


async def test_a_file_missing_for_a_moment_is_not_a_change(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    config.unlink()
    assert await watcher.poll() is False
    config.write_text("v: 1\n")
    assert await polls(watcher, 2) == [False, False]
    assert reloads.calls == 0


async def test_a_file_that_stays_missing_is_reported_once(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    watcher, reloads = watcher_for(config)
    await watcher.poll()
    config.unlink()
    assert await polls(watcher, 4) == [False, True, False, False]  # the reload then says what is wrong
    assert reloads.calls == 1


async def test_a_new_set_of_watched_files_starts_from_what_is_there(tmp_path):
    config, secret = tmp_path / "config.yaml", tmp_path / "secret"
    config.write_text("v: 1\n")
    secret.write_text("s\n")
    watched = [str(config)]
    reloads = Recorder()
    watcher = FileWatcher(lambda: watched, reloads, interval=lambda: 0.01)
    await watcher.poll()
    watched.append(str(secret))  # a reload added client_secret_file: it read the file itself
    assert await polls(watcher, 3) == [False, False, False]
    assert reloads.calls == 0


async def test_while_watching_is_off_nothing_happens_and_it_resumes_from_the_present(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    enabled = [True]
    watcher, reloads = watcher_for(config, enabled=enabled)
    await watcher.poll()
    enabled[0] = False
    config.write_text("v: 2\n")
    assert await polls(watcher, 3) == [False, False, False]
    enabled[0] = True
    assert await polls(watcher, 3) == [False, False, False]  # v: 2 is the new baseline
    assert reloads.calls == 0


async def test_a_failing_reload_does_not_stop_the_watcher(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("v: 1\n")
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    watcher = FileWatcher(lambda: [str(config)], broken, interval=lambda: 0.01)
    await watcher.poll()
    config.write_text("v: 2\n")
    assert await polls(watcher, 2) == [False, True]
    config.write_text("v: 3\n")
    assert await polls(watcher, 2) == [False, True]
    assert len(calls) == 2


async def test_the_running_loop_reloads_after_a_configmap_swap(tmp_path):
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write({"config.yaml": "v: 1\n"})
    changed = asyncio.Event()

    async def on_change() -> None:
        changed.set()

    watcher = FileWatcher(lambda: [str(cm.path("config.yaml"))], on_change, interval=lambda: 0.02)
    task = asyncio.ensure_future(watcher.run())
    try:
        await eventually(lambda: watcher.detector is not None, what="the watcher's first poll (its baseline)")
        cm.write({"config.yaml": "v: 2\n"})
        await asyncio.wait_for(changed.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_snapshots_follow_symlinks_to_the_real_file(tmp_path):
    cm = ConfigMapDir(tmp_path / "cm")
    cm.write({"config.yaml": "v: 1\n"})
    ((path, state),) = snapshot([str(cm.path("config.yaml"))])
    assert path == str(cm.path("config.yaml"))
    assert "/..20" in state.real_path and state.real_path.endswith("/config.yaml")
    assert state.digest is not None

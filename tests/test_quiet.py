"""Builds silence chatty libraries in their own thread only, and never change process-wide state."""

import logging
import os
import sys
import threading

from roberta_deploy.atomic import atomic_directory
from roberta_deploy.quiet import quiet_in_this_thread


def test_quiet_drops_only_the_quiet_threads_output_and_restores_the_streams(capsys):
    stdout_before, stderr_before = sys.stdout, sys.stderr
    logger = logging.getLogger("chatty-library")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    inside, done = threading.Event(), threading.Event()

    def other_thread():
        inside.wait(10)
        print("other thread prints")
        logger.info("other thread logs")
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        with quiet_in_this_thread(("chatty-library",)):
            inside.set()
            print("quiet thread prints")
            print("quiet thread writes to stderr", file=sys.stderr)
            logger.info("quiet thread logs")
            logger.error("quiet thread errors")  # errors still get through
            assert done.wait(10)
    finally:
        worker.join(10)
        logger.removeHandler(handler)
    assert sys.stdout is stdout_before and sys.stderr is stderr_before
    assert logger.filters == [] and handler.filters == []
    captured = capsys.readouterr()
    assert "other thread prints" in captured.out and "quiet thread" not in captured.out + captured.err
    assert sorted(records) == ["other thread logs", "quiet thread errors"]


def test_output_folders_get_the_umask_without_the_umask_being_changed(tmp_path, monkeypatch):
    def refuse(mask):
        raise AssertionError("os.umask changes process-wide state (a race in a server)")

    previous = os.umask(0o027)  # the test sets it; the library must only read it
    try:
        monkeypatch.setattr(os, "umask", refuse)
        with atomic_directory(tmp_path / "out") as work:
            (work / "file").write_text("x")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750

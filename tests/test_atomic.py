"""Outputs never land on an input, only replace what this tool wrote, lock out a second writer, and
leave nothing half-written behind; single files are renamed into place only where that is safe."""

import json
import os
import stat
import threading

import pytest

from roberta_deploy.atomic import MARKER_FILE, OutputFolder, atomic_directory, atomic_write_text, check_output_file
from roberta_deploy.errors import OutputError, OutputExistsError


def leftovers(folder):
    """Temporary names our writers use: none may survive a command, failed or not."""
    return [path.name for path in folder.rglob(".*") if ".partial-" in path.name or path.name.endswith(".lock")
            or ".old-" in path.name]


def write_output(path, files=None, **kwargs):
    with atomic_directory(path, **kwargs) as work:
        for name, text in (files or {"predictions.jsonl": "{}\n"}).items():
            (work / name).write_text(text)


def test_an_output_that_is_contains_or_sits_inside_an_input_is_refused(tmp_path, monkeypatch):
    data_folder = tmp_path / "data"
    data_folder.mkdir()
    data = data_folder / "rows.tsv"
    data.write_text("label\ttext_a\n1\t好\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for output in (data, data_folder, tmp_path, bundle, bundle / "out"):
        with pytest.raises(OutputError, match="overlaps the input"):
            OutputFolder(output, overwrite=True, inputs=(data, bundle))
    monkeypatch.chdir(data_folder)
    for output in (".", "..", str(data_folder)):
        with pytest.raises(OutputError, match="is or contains the current folder"):
            OutputFolder(output, overwrite=True)
    assert data.read_text() == "label\ttext_a\n1\t好\n" and not leftovers(tmp_path)


def test_overwrite_replaces_only_what_this_tool_wrote(tmp_path):
    output = tmp_path / "out"
    write_output(output, {"a.txt": "first"})
    assert json.loads((output / MARKER_FILE).read_text())["entries"] == ["a.txt"]
    with pytest.raises(OutputExistsError, match="already exists and is not empty"):
        write_output(output, {"a.txt": "second"})
    write_output(output, {"b.txt": "second"}, overwrite=True)
    assert sorted(os.listdir(output)) == [MARKER_FILE, "b.txt"]
    (output / "notes.txt").write_text("the user's own file")
    with pytest.raises(OutputExistsError, match=r"holds files roberta-deploy did not write \(notes.txt\)"):
        write_output(output, {"c.txt": "third"}, overwrite=True)
    assert (output / "notes.txt").read_text() == "the user's own file" and (output / "b.txt").exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="did not write"):
        write_output(stranger, overwrite=True)
    assert (stranger / "thesis.tex").read_text() == "years of work" and not leftovers(tmp_path)


def test_locks_and_staging_folders_left_by_a_killed_process_are_ours_others_are_not(tmp_path):
    from roberta_deploy.atomic import MARKER_FILE, foreign_entries

    folder = tmp_path / "deployment"
    (folder / "export").mkdir(parents=True)
    (folder / MARKER_FILE).write_text(json.dumps({"tool": "roberta-deploy", "entries": ["export"]}))
    (folder / ".export.lock").write_text("")
    (folder / ".export.partial-0123abcd").mkdir()
    assert foreign_entries(folder) == []
    (folder / ".notes.lock").write_text("")
    (folder / ".export.partialx").mkdir()
    assert foreign_entries(folder) == [".export.partialx", ".notes.lock"]


def test_a_bundle_written_before_the_marker_is_recognised_by_its_manifest(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "tokenizer").mkdir(parents=True)
    (bundle / "model.xml").write_text("x")
    (bundle / "tokenizer" / "tokenizer.json").write_text("{}")
    (bundle / "manifest.json").write_text(json.dumps({"kind": "bundle", "files": {
        "model.xml": "0", "tokenizer/tokenizer.json": "0"}}))
    write_output(bundle, {"model.xml": "y"}, overwrite=True)
    assert (bundle / "model.xml").read_text() == "y"


def test_a_symlinked_output_folder_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "real"
    write_output(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_output(link, overwrite=True)
    assert link.is_symlink() and (target / "predictions.jsonl").exists()


def test_a_second_writer_is_locked_out_while_the_first_works(tmp_path):
    output = tmp_path / "out"
    with OutputFolder(output) as first:
        with pytest.raises(OutputExistsError, match="another roberta-deploy command is writing"):
            with OutputFolder(output):
                pass
        with first.staging() as work:
            (work / "rows.jsonl").write_text("complete\n")
    assert (output / "rows.jsonl").read_text() == "complete\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the lock file is gone


def test_writers_racing_in_threads_one_wins_the_rest_get_a_clear_error(tmp_path):
    output = tmp_path / "out"
    start = threading.Barrier(4)
    outcomes = []

    def writer(number):
        start.wait(timeout=30)
        try:
            write_output(output, {"rows.jsonl": f"writer {number}\n" * 1000})
            outcomes.append(("won", number))
        except OutputExistsError as error:
            outcomes.append(("lost", error.problem))

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    winners = [number for outcome, number in outcomes if outcome == "won"]
    assert len(winners) == 1 and len(outcomes) == 4
    assert (output / "rows.jsonl").read_text() == f"writer {winners[0]}\n" * 1000
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_or_interrupt_leaves_nothing_not_even_new_parent_folders(tmp_path, error):
    output = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(type(error)):
        with atomic_directory(output) as work:
            (work / "half.jsonl").write_text("half")
            raise error
    assert os.listdir(tmp_path) == []


def test_a_folder_that_appears_from_a_writer_ignoring_the_lock_is_not_replaced(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(OutputExistsError):
        with atomic_directory(output) as work:
            (work / "ours.txt").write_text("ours")
            output.mkdir()
            (output / "theirs.txt").write_text("theirs")
    assert os.listdir(output) == ["theirs.txt"] and not leftovers(tmp_path)


def test_an_output_under_a_file_or_an_unwritable_place_is_refused_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        OutputFolder(blocker / "out")
    with pytest.raises(OutputExistsError, match="exists and is not a folder"):
        OutputFolder(blocker)


def test_single_files_are_renamed_into_place_only_over_regular_files(tmp_path):
    report = tmp_path / "report.json"
    atomic_write_text(report, "one")
    atomic_write_text(report, "two")
    assert report.read_text() == "two"
    link = tmp_path / "link.json"
    link.symlink_to(report)
    atomic_write_text(link, "through the link")
    assert link.is_symlink() and report.read_text() == "through the link"
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    atomic_write_text("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not leftovers(tmp_path)


def test_a_named_pipe_is_written_through(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    atomic_write_text(pipe, "streamed")
    reader.join(timeout=30)
    assert received == ["streamed"] and stat.S_ISFIFO(os.stat(pipe).st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_device_is_a_one_line_no_space_error_and_stays_a_device():
    with pytest.raises(OutputError) as caught:
        atomic_write_text("/dev/full", "x" * 100_000)
    assert caught.value.problem == "cannot write /dev/full: No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_file_output_overlapping_an_input_is_refused(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output_file(bundle / "manifest.json", inputs=(bundle,), flag="--json")
    assert (bundle / "manifest.json").read_text() == "{}"

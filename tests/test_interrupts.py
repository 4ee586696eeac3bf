"""interrupts.py: a stop signal is never lost and never raised inside an import. Each case runs in a child
process, because the handlers (and the remembered signal) are process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import roberta_deploy

PACKAGE_ROOT = str(Path(roberta_deploy.__file__).resolve().parents[1])


def run_child(code: str, folder: Path) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(folder)], capture_output=True,
                            text=True, timeout=60, cwd=folder, env={"PYTHONPATH": f"{PACKAGE_ROOT}:{folder}"})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_swallowed_ctrl_c_is_raised_again_before_the_output_is_committed(tmp_path):
    printed = run_child("""
        import os, signal, sys, time
        from pathlib import Path
        from roberta_deploy import interrupts
        from roberta_deploy.atomic import OutputFolder

        interrupts.install_stop_handlers()
        folder = Path(sys.argv[1])
        output = OutputFolder(folder / "out")
        try:
            with output, output.staging() as work:
                (work / "result.txt").write_text("done")
                try:  # a library that catches everything, as some do around an import or a callback
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
                except BaseException:
                    pass
            print("committed")
        except KeyboardInterrupt:
            print("interrupted", sorted(path.name for path in folder.iterdir()))
    """, tmp_path)
    assert printed == "interrupted []"


def test_a_signal_inside_an_import_is_raised_after_it(tmp_path):
    (tmp_path / "slow_module.py").write_text(textwrap.dedent("""
        import os, signal, time
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # several re-deliveries land here, inside the import, and are deferred again
        LOADED = True
    """))
    printed = run_child("""
        import sys, time
        from roberta_deploy import interrupts

        interrupts.install_stop_handlers()
        try:
            import slow_module
            print("imported", slow_module.LOADED)
            time.sleep(5)
            print("never stopped")
        except interrupts.Terminated:
            print("terminated after the import", "slow_module" in sys.modules)
    """, tmp_path)
    assert printed.splitlines() == ["imported True", "terminated after the import True"]

"""Every shell and Python example in the README's code blocks, run on the demo model as a reader would run
it (servers on 127.0.0.1 with a free port, stopped after), so an example that breaks fails here. Each example
is in EXAMPLES: run as written, run with flags that only shorten it (said so beside it), or skipped with the
reason (it needs the hub, a fresh virtualenv or the optimum overlays). A README example missing from
EXAMPLES fails too, so a new one cannot go untested."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT = 600
CLI = [sys.executable, "-m", "roberta_deploy"]

# Flags added to an example only to make it quick; they change how long it measures, never what it shows.
QUICK_RUN = ["--precisions", "fp32,int8", "--batch-sizes", "32", "--perf-seconds", "0.2", "--no-sweep"]
QUICK_DEPLOY = ["--backend", "openvino", "--precision", "fp32", "--perf-seconds", "0.05", "--timing-rounds", "3",
                "--timing-cap", "1"]

SKIPPED = {
    "python3 -m venv .venv": "makes a fresh virtualenv and installs from PyPI; CI does exactly this from a clean clone",
    "pip install -e": "installs the project; CI does it from a clean clone",
    "pip install torch": "installs from the PyTorch index",
    ". .venv/bin/activate && HF_HUB_OFFLINE=1 python -m pytest": "the test suite itself, which runs this test",
    "roberta-deploy run --model linfuyou/": "needs the Hugging Face hub and the ChnSentiCorp test split",
    "from optimum.intel import": "optimum pins an older transformers: it runs in the overlays of "
                                 "scripts/optimum_overlays.sh (tests/build/test_optimum.py)",
}
RUN = ("roberta-deploy run", "roberta-deploy deploy --model roberta_deploy/demo/model", "curl -s 127.0.0.1:8080/predict",
       "roberta-deploy serve --bundle runs/latest/bundles/openvino-int8", "import roberta_deploy\nclassifier",
       "import roberta_deploy\n\ntexts", "from roberta_deploy.runtime.engine import Engine",
       "from roberta_deploy.runtime import Batcher")


def readme_examples() -> list[tuple[str, str]]:
    """(language, example): each command of a bash block (continuation lines joined, comments and `&&`
    chains of a skipped setup kept whole), and each python block whole."""
    examples = []
    for language, body in re.findall(r"```(bash|python)\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        if language == "python":
            examples.append((language, body.strip()))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                examples.append((language, " ".join(line.split())))
    return examples


def kind_of(example: str) -> tuple[str, str]:
    for prefix, reason in SKIPPED.items():
        if example.startswith(prefix):
            return "skip", reason
    for prefix in RUN:
        if example.startswith(prefix):
            return "run", prefix
    return "unknown", ""


def test_every_readme_example_is_run_or_skipped_with_a_reason():
    examples = readme_examples()
    assert len(examples) >= 10
    unknown = [example for _, example in examples if kind_of(example)[0] == "unknown"]
    assert not unknown, f"README examples this test does not run or skip: {unknown}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder to run examples in, where README paths (roberta_deploy/demo/...) resolve."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "roberta_deploy").symlink_to(REPO / "roberta_deploy")
    return folder


def environment():
    return dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def shell(command: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=environment(),
                            input=stdin)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def example(start: str) -> str:
    found = [text for _, text in readme_examples() if text.startswith(start)]
    assert found, f"the README no longer has an example starting {start!r}"
    return found[0]


def cli_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "roberta-deploy"
    return CLI + words[1:]


@pytest.fixture(scope="module")
def demo_run(sandbox):
    """Step 1's `roberta-deploy run` (after its setup): it leaves runs/latest for the examples that use it."""
    setup = example("python3 -m venv .venv")
    command = setup.split("&&")[-1].strip()
    assert command == "roberta-deploy run"
    result = shell(cli_args(command) + QUICK_RUN, sandbox)
    assert (sandbox / "runs" / "latest" / "bundles" / "openvino-int8" / "manifest.json").is_file(), result.stdout
    assert "wrote runs/run-" in result.stdout
    return sandbox


class Server:
    """A serving command started in the background: its output read on a thread, so waits are bounded."""

    def __init__(self, command: list[str], cwd: Path):
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=environment())
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = TIMEOUT) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} in {timeout} s:\n{''.join(self.seen)}") from None
            if line is None:
                raise AssertionError(f"exited ({self.process.wait()}) before {prefix!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line.strip()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the server did not stop within 120 s of SIGTERM") from None


def port_free_command(command: str) -> list[str]:
    """The example with --port 0 (the OS picks a free port; the server prints where it listens)."""
    args = cli_args(command)
    if "--port" in args:
        args[args.index("--port") + 1] = "0"
    else:
        args += ["--port", "0"]
    return args


def answered(curl_output: str) -> None:
    results = json.loads(curl_output)
    assert isinstance(results, list) and results and {"label", "score"} <= set(results[0]), curl_output


def curl(command: str, url: str, cwd: Path) -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    command = command.replace("127.0.0.1:8080", url.removeprefix("http://"))
    return shell(["bash", "-c", command], cwd).stdout


def test_serve_example_prints_routes_and_a_curl_line_that_works(demo_run):
    server = Server(port_free_command(example("roberta-deploy serve --bundle runs/latest")), demo_run)
    try:
        ready = server.wait_for("serving ")
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", ready).group(1)
        assert "POST /predict" in server.wait_for("  POST /predict")
        try_line = server.wait_for("try: curl")
        answered(curl(try_line.removeprefix("try: "), url, demo_run))
        # loadtest against it, texts from stdin, output piped through an 80-column terminal setting: the table
        # keeps its natural width (no wrapped header, no "request..." cut).
        samples = (REPO / "roberta_deploy" / "demo" / "samples.tsv").read_text(encoding="utf-8")
        result = subprocess.run(CLI + ["-q", "loadtest", url, "--data", "-", "--concurrency", "2", "--duration", "0.5",
                                       "--warmup", "0"], cwd=demo_run, input=samples, capture_output=True, text=True,
                                timeout=TIMEOUT, env=dict(environment(), COLUMNS="80"))
        assert result.returncode == 0, result.stderr
        header = next(line for line in result.stdout.splitlines() if "load" in line and "p99 ms" in line)
        assert "requests/s" in header and "texts/s" in header and "errors" in header and len(header) > 80
    finally:
        assert server.stop() == 0


def test_deploy_example_and_its_curl_line(sandbox):
    command = example("roberta-deploy deploy --model roberta_deploy/demo/model").replace("/tmp/x", str(sandbox / "x"))
    server = Server(port_free_command(command) + QUICK_DEPLOY, sandbox)
    try:
        ready = server.wait_for("serving ")
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", ready).group(1)
        answered(curl(example("curl -s 127.0.0.1:8080/predict"), url, sandbox))
    finally:
        assert server.stop() == 0
    assert (sandbox / "x" / "deployment.json").is_file()


def run_python(code: str, cwd: Path) -> str:
    return shell([sys.executable, "-c", code], cwd).stdout


def test_pipeline_example_builds_from_the_demo_checkpoint(sandbox):
    output = run_python(example("import roberta_deploy\nclassifier"), sandbox)
    assert re.search(r"\[\{'label': '(positive|negative)', 'score': 0\.\d+\}\]", output), output


def test_pipeline_example_on_the_latest_run(demo_run):
    output = run_python(example("import roberta_deploy\n\ntexts"), demo_run)
    assert output.count("positive") + output.count("negative") > 200, output[-2000:]


def test_engine_and_batcher_examples(demo_run):
    engine = example("from roberta_deploy.runtime.engine import Engine")
    batcher = example("from roberta_deploy.runtime import Batcher")
    output = run_python(engine + "\n" + batcher + "\nprint(logits.shape, many.label_names)", demo_run)
    assert "(1, 2)" in output and "positive" in output, output

"""`roberta-deploy deploy`: the command-line face of roberta_deploy.jobs.deploy, then the serving step.
Only this module's functions print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import flags
from ..defaults import AUTO_BACKEND, AUTO_BACKENDS, DEFAULT_MAX_SEQ_LENGTH
from ..errors import UsageError
from ..jobs.deploy_report import interval_text, precision_label
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .common import parse_int_list, stdin_for
from .console import console, step_printer
from .exits import reports_errors
from .serve import endpoint_printer, event_printer, require_serve_extra
from .serving_flags import RayFlags, ServeFlags, with_ray_flags, with_serve_flags


@command("deploy", epilog=examples(
    "roberta-deploy deploy --model roberta_deploy/demo/model --data roberta_deploy/demo/samples.tsv --output /tmp/x",
    "roberta-deploy deploy --model ckpt --data dev.tsv --backend openvino --no-serve",
    "roberta-deploy deploy --model ckpt --data dev.tsv --ray --replicas 2 --port 8000   "
    "# pip install 'roberta-deploy[ray]'"))
@reports_errors
@stdin_for("data")
@with_ray_flags
@with_serve_flags
def deploy_command(
    model: Annotated[str, typer.Option(help="Checkpoint folder or hub id (a hub id needs the network or the local "
                                            "Hugging Face cache).", rich_help_panel=MODEL)],
    data: Annotated[Optional[Path], typer.Option(
        help="Labelled texts (TSV/CSV/JSONL): int8 calibration, and accuracy on the texts held back from it. "
             "Without it accuracy is not checked and fp32 is kept (unless --precision says otherwise); - reads stdin.",
        rich_help_panel=INPUT)] = None,
    accuracy_budget: Annotated[float, typer.Option(
        help="Accuracy points below fp32 that a faster candidate may lose on the held-back texts of --data.",
        rich_help_panel=MODEL), flags.NON_NEGATIVE] = 0.5,
    backend: Annotated[str, typer.Option(
        help=f"{AUTO_BACKEND}: every CPU engine installed ({', '.join(AUTO_BACKENDS)}), each at every precision "
             "it offers on this CPU; or one backend.", rich_help_panel=MODEL)] = AUTO_BACKEND,
    precision: Annotated[Optional[str], typer.Option(
        help="auto (the default with --data): the fastest within --accuracy-budget; or one precision to deploy "
             "(still checked against the budget when --data is given). Default without --data: fp32.",
        rich_help_panel=MODEL)] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="Folder for the export, every candidate's bundle and the reports (default: deployments/<model "
             "name>). A second deploy into it reuses what was made with the same model and settings.",
        rich_help_panel=OUTPUT)] = None,
    max_seq_length: Annotated[int, typer.Option(help="Longest input in tokens; longer texts are truncated.",
                                                rich_help_panel=MODEL), flags.COUNT]
        = DEFAULT_MAX_SEQ_LENGTH,
    calibration_samples: Annotated[int, typer.Option(
        help="Texts of --data that calibrate int8; the rest score every candidate.", rich_help_panel=INPUT),
        flags.COUNT] = 128,
    timing_rounds: Annotated[int, typer.Option(
        help="At least this many interleaved rounds (A B C, B C A, ...) per candidate: the median round counts, "
             "with its confidence interval, so a burst of load on one round does not decide.",
        rich_help_panel=BATCHING), flags.COUNT] = 5,
    perf_seconds: Annotated[float, typer.Option(
        help="Each candidate's turn in a round, for passes over the scored texts and again for batch-1 latency. "
             "Short is quick; more rounds, not longer ones, narrow the intervals.", rich_help_panel=BATCHING),
        flags.POSITIVE] = 0.5,
    timing_cap: Annotated[float, typer.Option(
        help="Rounds continue while the fastest candidates' intervals overlap, up to this many seconds of "
             "throughput timing; then they are reported tied within noise.", rich_help_panel=BATCHING),
        flags.POSITIVE] = 60.0,
    distill: Annotated[Optional[str], typer.Option(
        help="Layer counts of students to distil from the model on --data (minus the scored texts), e.g. 3,2. "
             "Each joins the candidates at every precision and is judged by the same budget against the model's "
             "fp32; fewer layers are faster.", rich_help_panel=MODEL)] = None,
    distill_epochs: Annotated[int, typer.Option(help="Epochs of each student's distillation.",
                                                rich_help_panel=MODEL), flags.COUNT] = 3,
    serve: Annotated[bool, typer.Option("--serve/--no-serve",
                                        help="Serve the chosen bundle when it is ready (--no-serve: stop after "
                                             "the reports).", rich_help_panel=OUTPUT)] = True,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a deployment of another model in --output (a deployment of this model is reused or "
             "updated without it).", rich_help_panel=OUTPUT)] = False,
    serve_flags: ServeFlags = None,
    ray_flags: RayFlags = None,
) -> None:
    """One command from a checkpoint to a served endpoint: export, build every backend and precision this CPU
    offers, time and score each here, keep the fastest within the accuracy budget, write deployment.md/json and
    report.html, and serve it (with --ray, on Ray Serve)."""
    from ..jobs.deploy import DEPLOYMENT_JSON, DEPLOYMENT_MARKDOWN, DeployOptions, plan_deployment, prepare_deployment
    from ..jobs.report import REPORT_HTML

    output = output or Path("deployments") / _folder_name(model)
    if serve:  # serve's and Ray's flags are checked before any build
        require_serve_extra()
        ray_flags.options(serve_flags.options([str(output / "chosen")]))
    elif ray_flags.on_ray:
        raise UsageError("--ray only applies when deploy serves", "leave --no-serve or --ray off")
    plan = plan_deployment(DeployOptions(
        model=model, output=output, data=data, accuracy_budget=accuracy_budget, backend=backend,
        precision=precision, max_seq_length=max_seq_length, calibration_samples=calibration_samples,
        timing_rounds=timing_rounds, perf_seconds=perf_seconds, timing_cap=timing_cap, overwrite=overwrite,
        distill=parse_int_list(distill, "--distill") if distill else (), distill_epochs=distill_epochs))
    report = prepare_deployment(plan, on_step=step_printer())
    console.print(candidates_table(report))
    choice = report["choice"]
    gate = choice.get("accuracy_gate") or {}
    if gate.get("note"):
        console.print(gate["note"])
    if not report["accuracy_checked"]:
        console.print("accuracy was not checked: no --data was given (pass labelled texts to let deploy choose a "
                      "faster precision within --accuracy-budget)")
    student = f"{choice['label']} " if choice.get("label") else ""
    console.print(f"chosen: {student}{choice['backend']} {precision_label(choice)} ({output / choice['bundle']}): "
                  f"{choice['reason']}")
    console.print(f"wrote {output / DEPLOYMENT_MARKDOWN}, {output / DEPLOYMENT_JSON} and {output / REPORT_HTML}")
    if serve:
        serve_chosen(output / choice["bundle"], serve_flags, ray_flags, example_text=plan.scoring.texts[0])


def serve_chosen(bundle: Path, serve_flags: ServeFlags, ray_flags: RayFlags, example_text: str) -> None:
    """The serving step: one call into the serve layer with the chosen bundle and serve's options, the same
    call `serve` makes: serve.server.serve in this process, or with --ray serve_until_stopped on Ray Serve.
    Either returns once SIGTERM or SIGINT stopped it and every accepted request was answered."""
    options = serve_flags.options([str(bundle)])
    ray_options = ray_flags.options(options)
    print_endpoint = endpoint_printer(options, example_text)

    if ray_options is None:
        from ..serve.server import serve

        serve(options, on_event=event_printer(), on_ready=print_endpoint)
    else:
        from ..serve.ray_deployment import serve_until_stopped

        serve_until_stopped(options, ray_options, on_event=event_printer(), on_ready=print_endpoint)


def candidates_table(report: dict) -> Table:
    """Every candidate's figures with their intervals (deployment.json's records)."""
    table = Table(title=f"deploy {report['model']}: {report['scored_texts']} {report['scored_on']}")
    for column in ("model", "backend", "precision", "artifacts", "accuracy (interval)", "vs fp32", "disagree", "texts/s "
                   "(interval)", "b1 p50 ms (interval)", "verdict"):
        table.add_column(column, justify="left" if column in ("model", "backend", "precision", "artifacts", "verdict")
                         else "right")
    for row in report["candidates"]:
        measured = row.get("measured") or {}
        paired = row.get("paired_vs_fp32")
        table.add_row(row.get("label") or "model", row["backend"], precision_label(row),
                      row["status"],
                      interval_text(measured.get("accuracy_interval"), "{:.4f}"),
                      _format(row.get("points_vs_fp32"), "{:+.2f}"),
                      f"{paired['disagreements']}/{paired['texts']}" if paired else "",
                      interval_text(measured.get("texts_per_second_interval"), "{:,.0f}"),
                      interval_text(measured.get("latency_p50_ms_interval"), "{:.2f}"), row["verdict"])
    return table


def _format(value, template: str) -> str:
    return "" if value is None else template.format(value)


def _folder_name(model: str) -> str:
    """deployments/<this>: the checkpoint folder's name, or the hub id with '/' as '--' (as the hub cache does)."""
    return Path(model).expanduser().resolve().name if Path(model).expanduser().exists() else model.replace("/", "--")

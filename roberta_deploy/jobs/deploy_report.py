"""deployment.md: what deploy chose and why, every candidate's figures with their intervals, the machine
and its load; read from what deployment.json holds (report.py draws the same as report.html)."""

from __future__ import annotations


def precision_label(record: dict) -> str:
    """A candidate's, choice's or bundle manifest's precision as reports show it: 'int8 (dynamic)' for int8
    of a mode other than the default (static, calibrated), the precision alone otherwise (older records and
    manifests have no "quantization": they are static)."""
    quantization = record.get("quantization")
    precision = record["precision"]
    return f"{precision} ({quantization})" if quantization and quantization != "static" else precision


def interval_text(interval: dict | None, template: str) -> str:
    """'1,234 (1,200-1,260)': a value and its interval, or '' when there is none."""
    if not interval:
        return ""
    return (f"{template.format(interval['value'])} ({template.format(interval['low'])}-"
            f"{template.format(interval['high'])})")


def timing_text(settings: dict) -> str:
    return (f"each candidate timed in interleaved rounds (at least {settings['timing_rounds']}, more while the "
            f"fastest does not clear the others round by round, at most {settings['timing_cap']:g} s in all) of "
            f"{settings['perf_seconds']:g} s passes over the texts (throughput hint, tokenizing included), then the "
            "same for batch-1 calls (latency hint); the median round with a distribution-free confidence interval for "
            "the median; the fastest wins when the interval of its per-round speed ratio over each other lies above 1, "
            "else the tie goes to the more exact precision and simpler backend (docs/deploy.md)")


def deployment_markdown(report: dict) -> str:
    settings, choice, machine = report["settings"], report["choice"], report["machine"]
    data = settings["data"] or "none (accuracy not checked)"
    lines = [f"# Deployment of {report['model']}", "",
             f"Model sha256 {report['model_sha256'][:12]}; data {data}; accuracy budget "
             f"{settings['accuracy_budget_points']:g} points below fp32; precision {settings['precision']}; "
             f"export {report['export']['status']}.", "",
             f"**Chosen: {_label(choice)}{choice['backend']} {precision_label(choice)}** (`{choice['bundle']}`): "
             f"{choice['reason']}.", ""]
    for student in report.get("students", []):
        lines.append(f"- {student['name']}: distilled from the model (its layers "
                     f"{', '.join(map(str, student['teacher_layers_kept']))} kept), agreement with it "
                     f"{student['held_back_agreement_with_teacher']:.4f} on {student['held_back_rows']} texts held "
                     f"back from distillation; `{student['checkpoint']}`")
    if report.get("students"):
        lines.append("")
    if choice.get("tied_within_noise"):
        lines += [f"Tied within noise: {', '.join(choice['tied_with'])}.", ""]
    gate = choice.get("accuracy_gate")
    if gate and gate.get("note"):
        lines += [gate["note"] + ".", ""]
    if not report["accuracy_checked"]:
        lines += ["Accuracy was not checked: no `--data` was given. Pass labelled texts to let deploy choose a "
                  "faster precision within the budget.", ""]
    lines += [f"Timed on {report['scored_texts']} {report['scored_on']}: {timing_text(settings)}.", "",
              "| model | backend | precision | artifacts | accuracy (95% interval) | vs fp32 (points) | disagreements with "
              "fp32 | McNemar p | texts/s (interval) | rounds | batch-1 p50 ms (interval) | batch-1 p99 ms | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["candidates"]:
        measured = row.get("measured") or {}
        latency = measured.get("latency_ms_batch1") or {}
        paired = row.get("paired_vs_fp32") or {}
        rounds = measured.get("throughput_rounds") or {}
        cells = [row.get("label") or "model", row["backend"], precision_label(row),
                 row["status"],
                 interval_text(measured.get("accuracy_interval"), "{:.4f}"),
                 _number(row.get("points_vs_fp32"), "{:+.2f}"),
                 f"{paired['disagreements']} of {paired['texts']}" if paired else "",
                 _number(paired.get("mcnemar_exact_p"), "{:.3f}"),
                 interval_text(measured.get("texts_per_second_interval"), "{:,.1f}"),
                 _number(rounds.get("rounds"), "{}"),
                 interval_text(measured.get("latency_p50_ms_interval"), "{:.2f}"),
                 _number(latency.get("p99"), "{:.2f}"), row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    load = machine.get("load_average")
    shares = [share for row in report["candidates"]
              for share in ((row.get("measured") or {}).get("throughput_rounds") or {}).get("others_cpu_share", [])]
    lines += ["", "## Machine", "",
              f"{machine['cpu_model']}; speed flags {' '.join(machine['cpu_flags']) or 'none'}; "
              f"{machine['usable_cores']} usable cores; {machine['memory_gib']} GiB; measured {machine['date']}"
              + (f"; load average {load[0]:g} / {load[1]:g} / {load[2]:g}" if load else "")
              + (f"; other processes took {min(shares):.0%}-{max(shares):.0%} of the CPU during the rounds"
                 if shares else "") + ".", ""]
    for backend, capabilities in machine["backend_capabilities"].items():
        lines.append(f"- {backend} reports {', '.join(capabilities)} on this CPU")
    return "\n".join(lines) + "\n"


def _label(choice: dict) -> str:
    """'student-3 ' before a student's backend and precision; nothing for the model's own candidates."""
    return f"{choice['label']} " if choice.get("label") else ""


def _number(value, template: str) -> str:
    return "" if value is None else template.format(value)

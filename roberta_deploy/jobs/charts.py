"""The charts of report.html, drawn with matplotlib as inline SVG (imported only here, only when a page is drawn).

Made to stay readable for 1 to 12 candidates: candidates are rows of horizontal bars (their names never
collide), legends sit inside the figure, numbers are plain (1,234 and 0.756, never 1.23e+03), axes of rates
and times start at zero, and a measured interval is drawn as an error bar. Text stays text in the SVG
(`svg.fonttype: none`), so a test or a screen reader can read the labels; each error bar is a group
with id `errorbar-<chart>-<n>`.
"""

from __future__ import annotations

import html
import io
import re
from typing import Callable, Sequence

INSTALL_CHARTS = "pip install 'roberta-deploy[report]'"
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
          "#64B5CD", "#2F4F4F", "#B8860B")
HIGHLIGHT = "#C44E52"  # the chosen candidate's bar


def plain_number(value: float) -> str:
    """1234.5 -> '1,235'; 12.34 -> '12.3'; 0.7568 -> '0.757': what a reader compares, without exponents."""
    if value != value:  # NaN
        return ""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


class Charts:
    """Collects inline SVG figures; drawing is skipped (with a note) when matplotlib is missing."""

    def __init__(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.available = False
        else:
            self.available = True
        self.figures: list[str] = []

    def _draw(self, chart_id: str, caption: str, paint: Callable, size: tuple[float, float] = (5.4, 3.2)) -> None:
        if not self.available:
            return
        import matplotlib
        from matplotlib.figure import Figure

        # rc_context: settings for this figure only; nothing process-wide changes.
        with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                                    "axes.spines.right": False, "svg.hashsalt": chart_id,
                                    "font.family": ["DejaVu Sans", "sans-serif"]}):
            figure = Figure(figsize=size, layout="constrained")
            paint(figure.add_subplot())
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
        svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)
        svg = svg.replace("<svg", f'<svg role="img" aria-label="{_e(caption)}"', 1)
        small = ' class="small"' if size[0] < 4 else ""
        self.figures.append(f'<figure id="{chart_id}"{small}>{svg}<figcaption>{_e(caption)}</figcaption></figure>')

    def ranges(self, chart_id: str, caption: str, names: Sequence[str], values: Sequence[float],
               intervals: Sequence[tuple[float, float] | None], *, xlabel: str, upper: float | None = None,
               highlight: str | None = None, markers: dict[str, Sequence[float]] | None = None,
               reference_line: tuple[float, str] | None = None) -> None:
        """One horizontal bar per name (top to bottom in the given order) from zero to its value, the interval
        as an error bar, the value written past the bar's end; `highlight` names the bar drawn in red (the
        choice), `markers` adds labelled points per name (e.g. p99), `reference_line` a dashed (x, label)."""
        def paint(axes):
            count = len(names)
            positions = list(range(count))[::-1]  # the first name on top
            colors = [HIGHLIGHT if name == highlight else COLORS[0] for name in names]
            axes.barh(positions, values, height=0.6, color=colors, zorder=2)
            for number, (position, value, interval) in enumerate(zip(positions, values, intervals)):
                if interval is None:
                    continue
                low, high = interval
                bar = axes.errorbar([value], [position], xerr=[[max(0.0, value - low)], [max(0.0, high - value)]],
                                    fmt="none", ecolor="#222", elinewidth=1.2, capsize=4, zorder=3)
                bar.lines[2][0].set_gid(f"errorbar-{chart_id}-{number}")  # the bar's line; one id each
            right = max([high for interval in intervals if interval for _, high in [interval]] + list(values)
                        + [value for points in (markers or {}).values() for value in points] + [1e-9])
            for number, (position, value, interval) in enumerate(zip(positions, values, intervals)):
                end = max([interval[1] if interval else value]
                          + [points[number] for points in (markers or {}).values()])
                axes.text(end + right * 0.02, position, plain_number(value), va="center", fontsize=8, zorder=4)
            for number, (label, points) in enumerate((markers or {}).items()):
                axes.scatter(points, positions, marker="D", s=22, color=COLORS[(number + 1) % len(COLORS)],
                             zorder=4, label=label)
            if reference_line is not None:
                axes.axvline(reference_line[0], color="#666", linestyle="--", linewidth=1, label=reference_line[1])
            axes.set_yticks(positions, names)
            axes.set_xlim(0, upper if upper is not None else right * 1.18)
            axes.set_xlabel(xlabel)
            axes.grid(axis="x", alpha=0.3)
            axes.xaxis.set_major_formatter(_plain_formatter())
            handles, _ = axes.get_legend_handles_labels()
            if highlight is not None or handles:
                from matplotlib.patches import Patch

                extra = [Patch(color=HIGHLIGHT, label="chosen")] if highlight is not None else []
                # Below the axes, inside the figure: it never hides a bar, however many there are.
                axes.figure.legend(handles=extra + handles, fontsize=7, loc="outside lower center", frameon=False,
                                   ncol=len(extra + handles))

        self._draw(chart_id, caption, paint, size=(5.4, 1.4 + 0.34 * max(1, len(names))))

    def pareto(self, chart_id: str, caption: str, names: Sequence[str], speeds: Sequence[float],
               accuracies: Sequence[float], *, highlight: str | None = None) -> None:
        """Accuracy against speed, one labelled point per name (`highlight` in red), and a dashed line through
        the front: the points no other beats on both."""
        def paint(axes):
            for name, speed, accuracy in zip(names, speeds, accuracies):
                axes.scatter([speed], [accuracy], s=26, zorder=3, color=HIGHLIGHT if name == highlight else COLORS[0])
                axes.annotate(name, (speed, accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
            points = list(zip(speeds, accuracies))
            front = sorted(point for point in points if not any(
                other != point and other[0] >= point[0] and other[1] >= point[1] for other in points))
            if len(front) > 1:
                axes.plot(*zip(*front), color="#999", linewidth=0.8, linestyle="--", zorder=2)
            axes.set_xlabel("texts / s")
            axes.set_ylabel("accuracy")
            axes.grid(alpha=0.3)
            axes.xaxis.set_major_formatter(_plain_formatter())

        self._draw(chart_id, caption, paint)

    def bars(self, chart_id: str, caption: str, groups: list[str], series: dict[str, list[float]], *, ylabel: str,
             errors: dict[str, list[tuple[float, float] | None]] | None = None,
             size: tuple[float, float] = (5.4, 3.2)) -> None:
        """Grouped vertical bars from zero (or below, for negative values), values on the bars while they fit,
        long or many group names wrapped and turned, the legend inside the axes."""
        def paint(axes):
            width = 0.8 / max(1, len(series))
            labelled = len(groups) * len(series) <= 24  # past that, values on the bars overlap: the table has them
            for number, (name, values) in enumerate(series.items()):
                positions = [index + (number - (len(series) - 1) / 2) * width for index in range(len(groups))]
                bars = axes.bar(positions, values, width, label=name, color=COLORS[number % len(COLORS)])
                for index, interval in enumerate((errors or {}).get(name) or []):
                    if interval is None or values[index] != values[index]:
                        continue
                    bar = axes.errorbar([positions[index]], [values[index]],
                                        yerr=[[max(0.0, values[index] - interval[0])],
                                              [max(0.0, interval[1] - values[index])]],
                                        fmt="none", ecolor="#222", elinewidth=1, capsize=3)
                    bar.lines[2][0].set_gid(f"errorbar-{chart_id}-{number}-{index}")
                if labelled:
                    axes.bar_label(bars, labels=[plain_number(value) for value in values],
                                   fontsize=7 if len(series) < 3 else 6, padding=1,
                                   rotation=0 if len(series) < 3 else 90)
            turned = len(groups) > 4 or max((len(group) for group in groups), default=0) > 10
            axes.set_xticks(range(len(groups)), [group.replace(" ", "\n") if not turned else group for group in groups],
                            rotation=0 if not turned else 30, ha="center" if not turned else "right")
            axes.set_ylabel(ylabel)
            values = [value for row in series.values() for value in row if value == value]  # NaN: no bar
            tops = [interval[1] for row in (errors or {}).values() for interval in row or [] if interval]
            # From zero, or below it for negative values (a correlation); room above for the labels and legend.
            axes.set_ylim(min(0.0, min(values, default=0) * 1.15),
                          max(max(values + tops, default=1) * (1.3 if len(series) > 1 else 1.15), 1e-9))
            axes.yaxis.set_major_formatter(_plain_formatter())
            if len(series) > 1:
                axes.legend(fontsize=7, frameon=True, framealpha=0.9, loc="upper right",
                            ncol=min(len(series), 3))
            axes.grid(axis="y", alpha=0.3)

        self._draw(chart_id, caption, paint, size)

    def lines(self, chart_id: str, caption: str, series: dict[str, tuple[list, list]], *, xlabel: str,
              ylabel: str, errors: dict[str, list[tuple[float, float] | None]] | None = None) -> None:
        def paint(axes):
            for number, (name, (xs, ys)) in enumerate(series.items()):
                axes.plot(xs, ys, marker="o", label=name, color=COLORS[number % len(COLORS)])
                for index, interval in enumerate((errors or {}).get(name) or []):
                    if interval is None:
                        continue
                    bar = axes.errorbar([xs[index]], [ys[index]], yerr=[[max(0.0, ys[index] - interval[0])],
                                                                        [max(0.0, interval[1] - ys[index])]],
                                        fmt="none", ecolor=COLORS[number % len(COLORS)], capsize=3)
                    bar.lines[2][0].set_gid(f"errorbar-{chart_id}-{number}-{index}")
            xs_all = sorted({x for xs, _ in series.values() for x in xs})
            if xs_all and xs_all[-1] / max(1, xs_all[0]) >= 8:
                axes.set_xscale("log", base=2)
            axes.set_xticks(xs_all, [str(x) for x in xs_all])
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.yaxis.set_major_formatter(_plain_formatter())
            axes.legend(fontsize=7, frameon=True, framealpha=0.9, loc="best")
            axes.grid(alpha=0.3)

        self._draw(chart_id, caption, paint)

    def scatter(self, chart_id: str, caption: str, gold: list[float], predicted: dict[str, list[float]]) -> None:
        """Predicted against gold, one colour per precision, with the diagonal a perfect model lies on."""
        def paint(axes):
            values = gold + [value for points in predicted.values() for value in points]
            low, high = min(values), max(values)
            axes.plot([low, high], [low, high], color="#999", linewidth=0.8, linestyle="--", label="predicted = gold")
            for number, (name, points) in enumerate(predicted.items()):
                axes.scatter(gold, points, s=9, alpha=0.6, label=name, color=COLORS[number % len(COLORS)],
                             edgecolors="none")
            axes.set_xlabel("gold score")
            axes.set_ylabel("predicted score")
            axes.legend(fontsize=7, frameon=True, framealpha=0.9, loc="upper left")
            axes.grid(alpha=0.3)

        self._draw(chart_id, caption, paint)

    def confusion(self, chart_id: str, caption: str, confusion: dict) -> None:
        def paint(axes):
            values = confusion["values"]
            labels = confusion["labels"]
            axes.imshow(values, cmap="Blues")
            peak = max(max(row) for row in values) or 1
            for row, row_values in enumerate(values):
                for column, value in enumerate(row_values):
                    axes.text(column, row, f"{value:,}", ha="center", va="center",
                              color="white" if value > peak / 2 else "black")
            axes.set_xticks(range(len(labels)), labels)
            axes.set_yticks(range(len(labels)), labels)
            axes.set_xlabel("predicted")
            axes.set_ylabel("gold")

        self._draw(chart_id, caption, paint, size=(3.4, 2.9))

    def html(self) -> str:
        if not self.available:
            return f'<p class="note">Charts need matplotlib: {_e(INSTALL_CHARTS)}</p>'
        return '<div class="charts">' + "".join(self.figures) + "</div>"


def _plain_formatter():
    from matplotlib.ticker import StrMethodFormatter

    return StrMethodFormatter("{x:,g}")  # 1,200 and 0.25: no exponent, no offset

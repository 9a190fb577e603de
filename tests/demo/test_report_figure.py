"""``accuracy.png``: the legend beside the curves (never over them), one colour per data
split in every panel, and the rounds where the audit excluded a participant marked."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from secfl.demo.report import EXCLUSION_LABEL, build_figure, write_report


def entry(number: int, excluded: list[str] | None = None, **metrics: float) -> dict[str, Any]:
    found = {"round": number, "participants": ["a", "b", "c"], "updates": 3, "counter": number}
    return found | metrics | ({} if excluded is None else {"excluded": excluded})


ROUNDS = [
    entry(1, [], train_loss=1.0, val_loss=1.1, val_accuracy=0.5, test_loss=1.2, test_accuracy=0.4),
    entry(2, ["c"], train_loss=0.7, val_loss=0.8, val_accuracy=0.6, test_loss=0.9),
    entry(3, [], train_loss=0.5, val_loss=0.6, val_accuracy=0.8, test_accuracy=0.7),
    entry(4, train_loss=0.4, val_loss=0.5, val_accuracy=0.85, test_accuracy=0.8),
]


def drawn(figure: Figure) -> Any:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def curves(figure: Figure) -> list[Line2D]:
    return [
        line for ax in figure.axes for line in ax.get_lines() if line.get_label() != EXCLUSION_LABEL
    ]


def test_the_legend_is_outside_every_panel() -> None:
    figure = build_figure(ROUNDS, "digits")
    renderer = drawn(figure)
    assert len(figure.axes) == 2 and len(figure.legends) == 1
    legend = figure.legends[0].get_window_extent(renderer)
    for ax in figure.axes:
        panel = ax.get_tightbbox(renderer)  # with its tick labels
        assert panel is not None and not legend.overlaps(panel), (legend, panel)
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["train", "validation", "test", EXCLUSION_LABEL]


def test_one_colour_per_split_in_every_panel() -> None:
    figure = build_figure(ROUNDS, "digits")
    colours: dict[str, set[str]] = {}
    for line in curves(figure):
        colours.setdefault(str(line.get_label()), set()).add(str(line.get_color()))
    assert set(colours) == {"train", "validation", "test"}
    assert all(len(found) == 1 for found in colours.values()), colours
    assert len({found.pop() for found in colours.values()}) == 3  # and distinct splits differ
    # validation and test appear in both panels, with the same colour in each
    panels = [{str(line.get_label()) for line in ax.get_lines()} for ax in figure.axes]
    assert {"validation", "test"} <= panels[0] and {"validation", "test"} <= panels[1]


def test_rounds_with_an_exclusion_are_marked_in_every_panel() -> None:
    figure = build_figure(ROUNDS, "digits")
    for ax in figure.axes:
        marks = [line for line in ax.get_lines() if line.get_label() == EXCLUSION_LABEL]
        assert [list(line.get_xdata()) for line in marks] == [[2, 2]]  # type: ignore[arg-type]
    quiet = build_figure([{**r, "excluded": []} for r in ROUNDS], "digits")
    assert all(line.get_label() != EXCLUSION_LABEL for ax in quiet.axes for line in ax.get_lines())
    labels = [text.get_text() for text in quiet.legends[0].get_texts()]
    assert EXCLUSION_LABEL not in labels


def test_a_regression_plots_its_own_metrics(tmp_path: Any) -> None:
    rounds = [entry(n, train_loss=1 / n, val_loss=1.1 / n, val_mse=3 / n, val_r2=1 - 1 / n)
              for n in range(1, 5)]  # fmt: skip
    figure = build_figure(rounds, "housing")
    assert [ax.get_ylabel() for ax in figure.axes] == ["mse", "r2", "loss"]
    assert write_report(tmp_path, rounds, title="housing")["png"].read_bytes()[:4] == b"\x89PNG"


def test_no_metrics_still_draws() -> None:
    figure = build_figure([entry(1), entry(2)], "empty")
    drawn(figure)
    assert len(figure.axes) == 1 and not figure.legends
    assert "no metrics reported" in [text.get_text() for text in figure.axes[0].texts]

"""The learning-curve figure of :class:`~optuna_fms.DashboardReport`, built as plotly JSON.

Trials are grouped into chains of continuations (:func:`_chains`), each with its joined
learning curve and its pauses; the traces are the grey curves of the other configurations
(:func:`_others_trace`), the coloured curves of the leading ones with their forecast bands
(:func:`_leading_traces`) and the pause markers (:func:`_pause_traces`). :class:`_Figure`
wraps the JSON for :func:`optuna_dashboard.save_plotly_graph_object`, so plotly itself is not
needed.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
from typing import Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._freeze_thaw import Lineage


_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


class _Chain:
    """A configuration's trials: a fresh trial and the continuations that followed it."""

    def __init__(self, root: FrozenTrial) -> None:
        self.trials = [root]
        self.curve: dict[int, tuple[float, int]] = {}  # step -> (value, trial number)
        self.pauses: list[tuple[int, float | None, str, bool]] = []  # step, value, text, continued

    def best(self, maximize: bool) -> float:
        finite = [v for v, _ in self.curve.values() if math.isfinite(v)]
        if not finite:
            return -math.inf if maximize else math.inf
        return max(finite) if maximize else min(finite)

    def points(self) -> tuple[list[int], list[float | None], list[int]]:
        steps = sorted(self.curve)
        values = [_round(self.curve[s][0]) for s in steps]
        return steps, values, [self.curve[s][1] for s in steps]


def _others_trace(others: Sequence[_Chain]) -> list[dict[str, Any]]:
    """One grey trace for every configuration outside the leading ones (none if none)."""
    data: list[dict[str, Any]] = []
    if others:
        xs: list[Any] = []
        ys: list[Any] = []
        texts: list[Any] = []
        for chain in others:
            steps, values, owners = chain.points()
            xs += [*steps, None]
            ys += [*values, None]
            texts += [*(f"trial {n}" for n in owners), None]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"other configurations ({len(others)})",
                "x": xs,
                "y": ys,
                "text": texts,
                "hoverinfo": "x+y+text",
                "line": {"color": "rgba(140,140,140,0.45)", "width": 1},
            }
        )
    return data


def _leading_traces(leading: Sequence[_Chain], final_step: int) -> list[dict[str, Any]]:
    """A coloured curve per leading configuration, with its forecast band and final mark."""
    data: list[dict[str, Any]] = []
    for rank, chain in enumerate(leading):
        color = _COLORS[rank % len(_COLORS)]
        steps, values, owners = chain.points()
        name = "trial " + "→".join(str(t.number) for t in chain.trials)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "legendgroup": name,
                "x": steps,
                "y": values,
                "text": [f"trial {n}" for n in owners],
                "hoverinfo": "x+y+text+name",
                "line": {"color": color, "width": 2},
                "marker": {"size": 4, "color": color},
            }
        )
        band = _band(chain, steps, values, final_step)
        if band is not None:
            trace, mean, std, at = band
            data.append({**trace, "legendgroup": name, "fillcolor": _alpha(color, 0.18)})
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{name} forecast",
                    "legendgroup": name,
                    "showlegend": False,
                    "x": [final_step],
                    "y": [mean],
                    "error_y": {
                        "type": "data",
                        "array": [2 * std if std is not None else 0],
                        "color": color,
                        "visible": True,
                    },
                    "text": [f"forecast made at step {at}: mean ± 2σ"],
                    "hoverinfo": "x+y+text",
                    "marker": {"symbol": "diamond", "size": 9, "color": color},
                }
            )
    return data


def _pause_traces(chains: Sequence[_Chain]) -> list[dict[str, Any]]:
    """Markers where trials were paused, and where a paused trial was then continued."""
    data: list[dict[str, Any]] = []
    for continued, label, symbol in (
        (False, "paused", "x"),
        (True, "paused, then continued", "circle-open"),
    ):
        marks = [p for c in chains for p in c.pauses if p[3] == continued]
        if marks:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": label,
                    "x": [m[0] for m in marks],
                    "y": [m[1] for m in marks],
                    "text": [m[2] for m in marks],
                    "hoverinfo": "x+y+text",
                    "marker": {
                        "symbol": symbol,
                        "size": 9,
                        "color": "#d62728" if not continued else "#2ca02c",
                        "line": {"width": 2},
                    },
                }
            )
    return data


def _chains(trials: Sequence[FrozenTrial]) -> list[_Chain]:
    """Group trials into chains of continuations, each with its joined learning curve."""
    lineage = Lineage(trials)
    chains = []
    for members in lineage.chains():
        root = members[0]
        chain = _Chain(root)
        chain.trials = members
        for i, node in enumerate(members):
            own = {s: (v, node.number) for s, v in node.intermediate_values.items()}
            cut = lineage.copied_steps(node)
            if i > 0 and cut >= 0:
                # A resumed continuation copied its parent's curve up to the pause step.
                chain.curve = {s: p for s, p in chain.curve.items() if s <= cut}
                chain.curve.update({s: p for s, p in own.items() if s > cut})
            else:
                # A fresh trial, or a continuation that was not resumed and started over.
                chain.curve = own
            child = members[i + 1] if i + 1 < len(members) else None
            pause = _attrs.read_pause(node.user_attrs)
            if pause is not None and pause.step in node.intermediate_values:
                text = f"trial {node.number} paused at step {pause.step}"
                if child is not None:
                    text += f", continued by trial {child.number}"
                value = _round(node.intermediate_values[pause.step])
                chain.pauses.append((pause.step, value, text, child is not None))
        chains.append(chain)
    return chains


def _band(
    chain: _Chain, steps: list[int], values: list[Any], final_step: int
) -> tuple[dict[str, Any], float | None, float | None, Any] | None:
    """A fan from the last observed value to the forecast's mean ± 2 std at the final step.

    Returns the fan's trace, the forecast's mean and std, and the step it was made at.
    """
    leaf = chain.trials[-1]
    forecast = _attrs.read_forecast(leaf.user_attrs)
    if forecast is None or leaf.state == TrialState.COMPLETE or not steps:
        return None
    last_step, last_value = steps[-1], values[-1]
    mean, std = forecast.mean, forecast.std
    # The fan's corners must be finite too (a std near 1e308 overflows mean + 2 std).
    if last_step >= final_step or last_value is None or not math.isfinite(abs(mean) + 2 * std):
        return None
    trace = {
        "type": "scatter",
        "mode": "lines",
        "name": f"forecast ±2σ (trial {leaf.number})",
        "showlegend": False,
        "x": [last_step, final_step, final_step, last_step],
        "y": [last_value, _round(mean + 2 * std), _round(mean - 2 * std), last_value],
        "fill": "toself",
        "line": {"width": 0},
        "hoverinfo": "skip",
    }
    return trace, _round(mean), _round(std), forecast.step


class _Figure:
    """What :func:`optuna_dashboard.save_plotly_graph_object` needs of a figure: ``to_json``.

    Building plotly JSON directly keeps plotly out of the dependencies and the write cheap.
    """

    def __init__(self, figure: dict[str, Any]) -> None:
        self._figure = figure

    def to_json(self) -> str:
        return json.dumps(self._figure, separators=(",", ":"), allow_nan=False)


def _round(value: float) -> float | None:
    return float(f"{value:.5g}") if math.isfinite(value) else None


def _alpha(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"

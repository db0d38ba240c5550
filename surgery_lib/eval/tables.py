"""Result rows as a reader sees them: means with their confidence intervals, and bar chart inputs.

Rows are the dicts of :func:`surgery_lib.eval.runner.evaluation_table`,
:func:`~surgery_lib.eval.runner.evaluate_methods` and :func:`surgery_lib.eval.analysis.summarise`
(``intervals=True``): a metric ``m`` with its interval in ``m_low`` / ``m_high``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def with_intervals(rows: Sequence[Mapping], metrics: Sequence[str], digits: int = 1) -> list[dict]:
    """Copies of table rows with a column
    ``"<metric> (95 % CI)"`` per metric, e.g. ``"41.2 [38.0, 44.5]"`` (the mean and its bootstrap
    interval over images); a row without the interval shows the value alone."""
    out = []
    for row in rows:
        shown = dict(row)
        for metric in metrics:
            if metric not in row:
                raise KeyError(f"no {metric!r} in the table; it has {sorted(row)}")
            text = f"{row[metric]:.{digits}f}"
            if f"{metric}_low" in row:
                text += f" [{row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f}]"
            shown[f"{metric} (95 % CI)"] = text
        out.append(shown)
    return out


def metric_bars(
    rows: Sequence[Mapping],
    metric: str,
    methods: Sequence[str] = ("raw", "surgery"),
    group: Sequence[str] = ("backbone", "dataset"),
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, tuple[float, float]]]]:
    """``(values, errors)`` for :func:`surgery_lib.ui.viz.bar_chart` from table rows: one group per
    distinct ``group`` columns (joined by a line break), one bar per method, and the bootstrap
    interval of each value as its error bar."""
    values: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        if row["method"] not in methods:
            continue
        name = "\n".join(str(row[g]) for g in group)
        if row["method"] in values.get(name, {}):
            raise ValueError(
                f"two rows of method {row['method']!r} in group {name!r}: "
                f"group by more columns than {list(group)}"
            )
        values.setdefault(name, {})[row["method"]] = float(row[metric])
        if f"{metric}_low" in row:
            errors.setdefault(name, {})[row["method"]] = (row[f"{metric}_low"], row[f"{metric}_high"])
    if not values:
        raise ValueError(f"no rows of the methods {list(methods)} in the table")
    ordered = {g: {m: values[g][m] for m in methods if m in values[g]} for g in values}
    return ordered, errors

"""Result rows as a reader sees them: means with their confidence intervals, and bar chart inputs.

Rows are the dicts of :func:`surgery_lib.eval.experiments.evaluation_table`,
:func:`~surgery_lib.eval.runner.evaluate_methods` and :func:`surgery_lib.eval.analysis.summarise`
(``intervals=True``): a metric ``m`` with its interval in ``m_low`` / ``m_high``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from surgery_lib.eval.claims import Claim
from surgery_lib.methods import METHOD_TITLES


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


_PAIR_KEYS = {"mSC": "sc", "mIoU": "iou", "pointing_game": "hit"}
"""The per-pair score of each summary metric that a paired test compares per image."""


def paired_test(a: Mapping, b: Mapping, metric: str = "mSC", resamples: int = 10_000) -> dict:
    """A paired sign-flip permutation test (:func:`surgery_lib.eval.nulls.sign_flip_test`) of two table
    rows of ``explain`` runs on the same images: per image the mean of the metric's pair score
    (:func:`surgery_lib.eval.experiments.image_values`; mSC: score contrast, mIoU: IoU %, pointing game: hit
    %), over the images both rows scored (each row's first ``images``).

    Returns:
        ``{"a", "b", "metric", "difference" (mean of a − b over images), "p_value", "images"}``.
    Raises:
        ValueError: a metric without a per-pair score, or no image scored by both.
    """
    from surgery_lib.eval.experiments import image_values
    from surgery_lib.eval.nulls import sign_flip_test

    if metric not in _PAIR_KEYS:
        raise ValueError(f"metric must be one of {tuple(_PAIR_KEYS)}, got {metric!r}")
    key = _PAIR_KEYS[metric]
    va = image_values(a["out"], key, a.get("images"))
    vb = image_values(b["out"], key, b.get("images"))
    common = sorted(va.keys() & vb.keys())
    if not common:
        raise ValueError(f"the runs {a['out']} and {b['out']} share no scored image")
    difference, p = sign_flip_test([va[i] for i in common], [vb[i] for i in common], resamples)
    return {
        "a": a["method"],
        "b": b["method"],
        "metric": metric,
        "difference": difference,
        "p_value": p,
        "images": len(common),
    }


def ranking(rows: Sequence[Mapping], metric: str = "mSC", digits: int = 1) -> tuple[list[dict], dict | None]:
    """Rows ranked by ``metric`` (highest first), computed from the numbers, with a paired test between
    the top two (:func:`paired_test`; ``None`` with fewer than two rows or without run folders).

    Returns:
        ``(ranked, test)``: ranked rows ``{"rank", "method", "<metric> (95 % CI)", <metric>}`` (plus
        ``"preset"`` when the rows have one), and the test of rank 1 against rank 2.
    """
    if not rows:
        raise ValueError("no rows to rank")
    ordered = sorted(rows, key=lambda r: -float(r[metric]))
    shown = with_intervals(ordered, [metric], digits)
    ranked = []
    for rank, row in enumerate(shown, start=1):
        entry = {"rank": rank, "method": row["method"], f"{metric} (95 % CI)": row[f"{metric} (95 % CI)"]}
        if "preset" in row:
            entry["preset"] = row["preset"]
        ranked.append({**entry, metric: float(row[metric])})
    test = None
    if len(ordered) >= 2 and all("out" in r for r in ordered[:2]) and metric in _PAIR_KEYS:
        test = paired_test(ordered[0], ordered[1], metric)
    return ranked, test


def row_label(row: Mapping) -> str:
    """A row's method as a reader reads it: the display name (:data:`~surgery_lib.methods.METHOD_TITLES`),
    `` + FS`` / `` − FS`` for a feature-surgery variant (``<name>+fs`` / ``<name>-fs``), and
    `` @ own protocol`` when the row ran under its method's protocol preset."""
    method = str(row["method"])
    suffix = ""
    for end, text in (("+fs", " + FS"), ("-fs", " − FS")):
        if method.endswith(end):
            method, suffix = method[: -len(end)], text
    return METHOD_TITLES.get(method, method) + suffix + (" @ own protocol" if row.get("preset") else "")


def interval_text(row: Mapping, metric: str, digits: int = 1) -> str:
    """``"12.1 [8.3, 15.9]"``: a row's metric with its 95 % bootstrap interval (the value alone when the
    row has none)."""
    return with_intervals([row], [metric], digits)[0][f"{metric} (95 % CI)"]


def beats(a: Mapping, b: Mapping, metric: str = "mSC", alpha: float = 0.05):
    """The claim "row ``a`` scores higher than row ``b`` in ``metric`` on the same images" as a
    :class:`~surgery_lib.eval.claims.Claim`: it holds when the paired difference (:func:`paired_test`) is
    positive with a sign-flip p-value below ``alpha``; ``measured`` gives ``a``'s value with its interval,
    the paired difference and p, ``compared_with`` ``b``'s value with its interval."""
    test = paired_test(a, b, metric)
    holds = test["difference"] > 0 and test["p_value"] < alpha
    measured = (
        f"{row_label(a)} {metric} {interval_text(a, metric)}, paired difference {test['difference']:+.1f} "
        f"over {test['images']} images (sign-flip p = {test['p_value']:.3g}, α = {alpha})"
    )
    return Claim(holds, measured, f"{row_label(b)} {interval_text(b, metric)}")

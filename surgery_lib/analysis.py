"""The analyses the notebooks run, in one place: the shipped data and dataset loaders, the paper's
analyses and the mechanism factorial (``mechanism``), nulls and chance levels, metrics and bootstrap
intervals, the evaluation runs and their tables. A notebook imports from here, from :mod:`surgery_lib`
and from :mod:`surgery_lib.figures` only, so that the modules behind these names can move."""

from surgery_lib.data.datasets import load_dataset
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval import mechanism
from surgery_lib.eval.analysis import (
    attention_locality,
    compare_interval,
    contribution_records,
    empty_prompt_map,
    map_records,
    maps_for,
    multilabel_variants,
    null_records,
    paired_difference,
    pointing_chance,
    random_text_shared_fraction,
    redundancy_controls,
    redundancy_records,
    redundancy_subtraction_records,
    shared_fraction,
    summarise,
    token_grid,
    token_norms_and_empty_map,
    unrelated_text_controls,
    vocabulary_sweep_records,
)
from surgery_lib.eval.downstream import held_out_gate, mask_area_shares, word_pointing_records
from surgery_lib.eval.experiments import dataset_specs, evaluation_table
from surgery_lib.eval.metrics import (
    bootstrap_ci,
    bootstrap_statistic,
    mask_iou,
    mean_average_precision,
    precision_recall_curve,
)
from surgery_lib.eval.nulls import (
    area_chance,
    cell_centre_chance,
    null_meter,
    position_permutation_test,
    sign_flip_test,
)
from surgery_lib.eval.presets import NULL_METHODS, explain_protocol, with_feature_surgery
from surgery_lib.eval.runner import image_records
from surgery_lib.eval.segmentation import (
    ARGMAX,
    Protocol,
    paired_miou,
    records_confusion,
    segment_image,
    segment_samples,
)
from surgery_lib.eval.sets import (
    caption_word_records,
    combined_point_records,
    point_precision_records,
    presence_records,
)
from surgery_lib.eval.tables import beats, interval_text, metric_bars, ranking, row_label, with_intervals
from surgery_lib.eval.towers import markdown_matrix, method_tower_matrix, project_towers

__all__ = [
    "ARGMAX",
    "NULL_METHODS",
    "Protocol",
    "area_chance",
    "attention_locality",
    "beats",
    "bootstrap_ci",
    "bootstrap_statistic",
    "caption_word_records",
    "cell_centre_chance",
    "combined_point_records",
    "compare_interval",
    "contribution_records",
    "dataset_specs",
    "default_source",
    "empty_prompt_map",
    "evaluation_table",
    "example_images",
    "explain_protocol",
    "held_out_gate",
    "image_records",
    "interval_text",
    "load_dataset",
    "map_records",
    "maps_for",
    "markdown_matrix",
    "mask_area_shares",
    "mask_iou",
    "mean_average_precision",
    "mechanism",
    "method_tower_matrix",
    "metric_bars",
    "multilabel_variants",
    "null_meter",
    "null_records",
    "paired_difference",
    "paired_miou",
    "point_precision_records",
    "pointing_chance",
    "position_permutation_test",
    "precision_recall_curve",
    "presence_records",
    "project_towers",
    "random_text_shared_fraction",
    "ranking",
    "records_confusion",
    "redundancy_controls",
    "redundancy_records",
    "redundancy_subtraction_records",
    "row_label",
    "segment_image",
    "segment_samples",
    "shared_fraction",
    "sign_flip_test",
    "summarise",
    "token_grid",
    "token_norms_and_empty_map",
    "unrelated_text_controls",
    "vocabulary_sweep_records",
    "with_feature_surgery",
    "with_intervals",
    "word_pointing_records",
]

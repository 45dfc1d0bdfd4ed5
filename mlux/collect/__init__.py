"""Activation collection over data sets, and layer separability (SAEs: `mlux.sae`).

    from mlux.collect import collect, analyze_layers
    result = collect("configs/models/mlux-toy.yaml")          # shards + manifest, resumable
    report = analyze_layers(result.result_dir)                 # where do categories separate?

Readers refuse an incomplete collection unless `allow_partial=True`, verify every shard's size
and checksum, and name the shard holding NaN/inf rows; see the README's fault table.
"""

from __future__ import annotations

from .analysis import analyze_layers, fit_logistic_probe, layer_separability
from .collector import CollectionResult, collect, load_model_for, resolve_hook_points
from .data import Dataset, balance_categories, load_dataset, read_prompts
from .lock import FolderLockedError, folder_lock
from .manifest import Manifest, load_activations, open_collection
from .plan import CollectionPlan, make_plan
from .run_config import (
    CollectConfig,
    DataSection,
    InferenceSection,
    ModelSection,
    OutputSection,
    SAESection,
    config_from_dict,
    load_config,
)
from .shards import read_shard_tensor
from .store import ActivationStore

__all__ = [
    "ActivationStore",
    "CollectConfig",
    "CollectionPlan",
    "CollectionResult",
    "DataSection",
    "Dataset",
    "FolderLockedError",
    "InferenceSection",
    "Manifest",
    "ModelSection",
    "OutputSection",
    "SAESection",
    "analyze_layers",
    "balance_categories",
    "collect",
    "config_from_dict",
    "fit_logistic_probe",
    "folder_lock",
    "layer_separability",
    "load_activations",
    "load_config",
    "load_dataset",
    "load_model_for",
    "make_plan",
    "open_collection",
    "read_prompts",
    "read_shard_tensor",
    "resolve_hook_points",
]

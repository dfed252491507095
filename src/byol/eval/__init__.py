"""mmselfsup's evaluation suite for BYOL backbones: kNN, linear and multi-head probes, VOC07 SVM
and low-shot SVM, semi-supervised fine-tuning, and the Markdown report.

Submodules are imported lazily by the names below, so ``import byol.eval`` stays cheap (the
training loop imports the kNN monitor from here) and sklearn / matplotlib load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalError": "features",
    "EvalModel": "features",
    "eval_transform": "transforms",
    "extract_features": "features",
    "cached_features": "features",
    "load_eval_model": "loading",
    "Evaluator": "suite",
    "build_evaluators": "suite",
    "EvalSettings": "settings",
    "mhead_pool": "features",
    "knn_classify": "knn",
    "linear_probe_features": "linear",
    "linear_probe_augmented": "linear",
    "multihead_probe": "linear",
    "multihead_probe_augmented": "linear",
    "svm_voc07": "svm",
    "svm_single_label": "svm",
    "lowshot_svm": "svm",
    "lowshot_single_label": "svm",
    "lowshot_sample": "svm",
    "read_voc07": "svm",
    "balanced_subset": "finetune",
    "finetune": "finetune",
    "finetune_fractions": "finetune",
    "render_markdown": "report",
    "write_report": "report",
    "plot_training": "plots",
    "plot_tsne": "plots",
}

__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'byol.eval' has no attribute {name!r}")

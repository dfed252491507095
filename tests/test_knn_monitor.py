"""The engine's optional kNN monitor on a labeled validation split."""

from __future__ import annotations

import json

from conftest import tiny_config

from byol.engine import pretrain


def test_knn_monitor_logs_every_n_epochs(tmp_path):
    cfg = tiny_config(tmp_path, **{"log.knn_every": 1, "train.epochs": 2, "log.knn_k": 5})
    pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in rows if "knn_top1_k5" in r]
    assert [r["epoch"] for r in knn] == [1, 2]
    assert [r["step"] for r in knn] == [4, 8]  # 64 images / batch 16 = 4 steps per epoch
    for r in knn:
        assert 0.0 <= r["knn_top1_k5"] <= r["knn_top5_k5"] <= 100.0


def test_knn_monitor_off_by_default(tmp_path):
    pretrain(tiny_config(tmp_path))
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "knn_top1" not in text

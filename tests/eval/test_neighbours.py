"""The nearest-neighbour picture of ``byol report``: right neighbours, held-out queries, a PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_gray_numpy_checkpoint

from byol.cli import main
from byol.eval.neighbours import neighbour_picture, pick_indices

RNG = np.random.default_rng(0)


def _run(d, test_images=None, n=40):
    train = RNG.integers(0, 256, (n, 16, 16), dtype=np.uint8)
    np.savez(d / "train.npz", images=train, labels=np.arange(n) % 4)
    if test_images is not None:
        np.savez(d / "test.npz", images=train[test_images], labels=np.arange(n)[test_images] % 4)
    save_gray_numpy_checkpoint(d / "last.pt", d / "train.npz",
                               d / "test.npz" if test_images is not None else None)
    return train


def test_each_query_finds_its_exact_copy_first(tmp_path):
    # the test images are copies of train images 3, 10, 17, 25: with the whole train set as
    # the bank each query's first neighbour is its copy, at cosine similarity 1
    copies = [3, 10, 17, 25]
    _run(tmp_path, copies)
    res = neighbour_picture(tmp_path / "last.pt", tmp_path / "nn.png", queries=4, k=5, bank=40,
                            device="cpu")
    assert not res["same_images"] and res["bank_indices"].tolist() == list(range(40))
    assert res["query_indices"].tolist() == [0, 1, 2, 3]
    first = res["bank_indices"][res["neighbours"][:, 0]]
    assert first.tolist() == copies
    torch.testing.assert_close(res["similarity"][:, 0], torch.ones(4), atol=1e-4, rtol=0)
    assert (res["similarity"][:, 1:] < 0.9999).all()  # the others are different images
    assert (tmp_path / "nn.png").stat().st_size > 5000


def test_without_a_test_split_queries_are_held_out_of_the_bank(tmp_path):
    _run(tmp_path)
    res = neighbour_picture(tmp_path / "last.pt", tmp_path / "nn.png", queries=6, k=8, bank=40,
                            device="cpu")
    assert res["same_images"]
    bank, queries = set(res["bank_indices"].tolist()), set(res["query_indices"].tolist())
    assert len(queries) == 6 and len(bank) == 34 and not bank & queries
    # no neighbour is the query itself: every similarity is below an exact match
    assert (res["similarity"] < 0.9999).all()
    assert 0.0 <= res["agreement"] <= 1.0


def test_pick_indices_is_fixed_by_its_seed_and_disjoint():
    a = pick_indices(100, 100, 50, 10, 7, same=True)
    b = pick_indices(100, 100, 50, 10, 7, same=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not set(a[0].tolist()) & set(a[1].tolist())
    assert not torch.equal(a[1], pick_indices(100, 100, 50, 10, 8, same=True)[1])


def test_report_draws_the_picture_and_links_it(tmp_path, caplog):
    _run(tmp_path, [1, 2, 3, 4, 5, 6])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "loss": 1.0}\n')
    assert main(["report", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "plots" / "neighbours.png").is_file()
    assert "plots/neighbours.png" in (tmp_path / "report.md").read_text()
    # the data moved away: the report is still written, the picture skipped with a reason
    (tmp_path / "plots" / "neighbours.png").unlink()
    (tmp_path / "train.npz").unlink()
    with caplog.at_level("WARNING", logger="byol"):
        assert main(["report", str(tmp_path), "--device", "cpu"]) == 0
    assert "picture skipped" in caplog.text and "--data" in caplog.text
    assert not (tmp_path / "plots" / "neighbours.png").exists()


def test_bad_sizes_are_refused(tmp_path):
    from byol.errors import EvalError

    _run(tmp_path, n=8)
    with pytest.raises(EvalError, match="fewer than k"):
        neighbour_picture(tmp_path / "last.pt", tmp_path / "nn.png", queries=2, k=8, bank=40,
                          device="cpu")

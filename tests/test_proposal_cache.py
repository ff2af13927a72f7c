"""Proposal cache: round trip, ordering, fingerprints, and refusal of stale or damaged files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from model.config import ProposalConfig
from model.proposal_cache import (
    FORMAT,
    ProposalCacheError,
    fingerprint_for,
    load_proposal_cache,
    save_proposal_cache,
)


def _fake_checkpoint(path: Path, payload: bytes = b"weights-v1") -> Path:
    path.write_bytes(payload)
    return path


def _proposals() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # Image "a": scores out of order on purpose (0.2, 0.9, 0.5) -> stored as 0.9, 0.5, 0.2.
    boxes_a = torch.tensor([[0.0, 0.0, 9.0, 9.0], [10.0, 10.0, 29.0, 19.0], [5.0, 5.0, 14.0, 24.0]])
    scores_a = torch.tensor([0.2, 0.9, 0.5])
    boxes_b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    scores_b = torch.tensor([0.7])
    empty = (torch.zeros((0, 4)), torch.zeros((0,)))
    return {"a": (boxes_a, scores_a), "b": (boxes_b, scores_b), "c": empty}


def test_round_trip_sorts_each_image_by_score(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt")
    fp = fingerprint_for(ckpt, ProposalConfig(), ["a", "b", "c"])
    path = save_proposal_cache(tmp_path / "cache.pt", _proposals(), fp)

    cache = load_proposal_cache(path, expected_fingerprint=fp)
    assert cache.image_ids == ("a", "b", "c")
    boxes, scores = cache["a"]
    assert scores.tolist() == pytest.approx([0.9, 0.5, 0.2])
    # The boxes moved with their scores: rows 1, 2, 0 of the input.
    assert boxes.tolist() == [[10.0, 10.0, 29.0, 19.0], [5.0, 5.0, 14.0, 24.0], [0.0, 0.0, 9.0, 9.0]]
    assert cache["b"][0].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert cache["c"][0].shape == (0, 4)
    assert cache.num_proposals == 4
    top2 = cache.boxes(top_n=2)
    assert top2["a"].shape == (2, 4) and top2["b"].shape == (1, 4)
    assert "a" in cache and "zzz" not in cache
    with pytest.raises(KeyError, match="zzz"):
        cache["zzz"]


def test_file_is_plain_tensors_and_strings(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt")
    path = save_proposal_cache(tmp_path / "cache.pt", _proposals(), fingerprint_for(ckpt, ProposalConfig(), ["a"]))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT
    assert isinstance(raw["fingerprint"], str) and isinstance(raw["checksum"], str)
    assert raw["counts"].tolist() == [3, 1, 0]
    assert raw["boxes"].shape == (4, 4) and raw["scores"].shape == (4,)
    # No temporary file left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt", "rpn.pt"]


def test_fingerprint_follows_checkpoint_bytes_settings_and_ids(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt", b"abc")
    fp = fingerprint_for(ckpt, ProposalConfig(), ["x", "y"], input={"min_size": 600, "max_size": 1000})
    assert fp["checkpoint_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert fp["num_images"] == 2
    assert fp["input"] == {"min_size": 600, "max_size": 1000}
    assert fp["proposal_config"]["post_nms_top_n"] == 300
    assert fp == fingerprint_for(ckpt, ProposalConfig(), ["x", "y"], input={"min_size": 600, "max_size": 1000})
    assert fp != fingerprint_for(ckpt, ProposalConfig(), ["y", "x"], input={"min_size": 600, "max_size": 1000})
    assert fp != fingerprint_for(ckpt, ProposalConfig(post_nms_top_n=2000), ["x", "y"], input={"min_size": 600, "max_size": 1000})
    _fake_checkpoint(ckpt, b"abd")
    assert fp != fingerprint_for(ckpt, ProposalConfig(), ["x", "y"], input={"min_size": 600, "max_size": 1000})


def test_fingerprint_mismatch_is_refused_with_clear_message(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt", b"step1-weights")
    ids = ["a", "b", "c"]
    path = save_proposal_cache(tmp_path / "train.pt", _proposals(), fingerprint_for(ckpt, ProposalConfig(), ids))
    # The RPN checkpoint was retrained after the cache was made: its bytes changed.
    _fake_checkpoint(ckpt, b"step1-weights-retrained")
    expected = fingerprint_for(ckpt, ProposalConfig(), ids)
    with pytest.raises(ProposalCacheError) as info:
        load_proposal_cache(path, expected_fingerprint=expected)
    message = str(info.value)
    assert str(path) in message
    assert "checkpoint_sha256: expected" in message
    assert hashlib.sha256(b"step1-weights-retrained").hexdigest() in message
    assert hashlib.sha256(b"step1-weights").hexdigest() in message
    # Other settings: the differing nested key is named.
    expected = fingerprint_for(_fake_checkpoint(ckpt, b"step1-weights"), ProposalConfig(nms_threshold=0.5), ids)
    with pytest.raises(ProposalCacheError, match=r"proposal_config\.nms_threshold: expected 0\.5, found 0\.7"):
        load_proposal_cache(path, expected_fingerprint=expected)


def test_truncated_cache_is_refused(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt")
    path = save_proposal_cache(tmp_path / "cache.pt", _proposals(), fingerprint_for(ckpt, ProposalConfig(), ["a"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProposalCacheError, match=r"cache\.pt: not a readable proposal cache"):
        load_proposal_cache(path)


def test_garbage_and_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a zip at all")
    with pytest.raises(ProposalCacheError, match="garbage.pt: not a readable proposal cache"):
        load_proposal_cache(garbage)
    foreign = tmp_path / "checkpoint.pt"
    torch.save({"format": "frcnn/1", "groups": {}}, foreign)
    with pytest.raises(ProposalCacheError, match=r"checkpoint.pt: not a proposal cache \(format 'frcnn/1'"):
        load_proposal_cache(foreign)
    with pytest.raises(ProposalCacheError, match="missing.pt: proposal cache not found"):
        load_proposal_cache(tmp_path / "missing.pt")


def test_damaged_content_fails_the_checksum(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt")
    path = save_proposal_cache(tmp_path / "cache.pt", _proposals(), fingerprint_for(ckpt, ProposalConfig(), ["a"]))
    raw = torch.load(path, weights_only=True)
    raw["boxes"][0, 0] += 1.0  # still a valid file, wrong numbers
    torch.save(raw, path)
    with pytest.raises(ProposalCacheError, match="cache.pt: checksum mismatch"):
        load_proposal_cache(path)


def test_inconsistent_counts_are_refused(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "rpn.pt")
    path = save_proposal_cache(tmp_path / "cache.pt", _proposals(), fingerprint_for(ckpt, ProposalConfig(), ["a"]))
    raw = torch.load(path, weights_only=True)
    raw["counts"] = torch.tensor([3, 2, 0])
    torch.save(raw, path)
    with pytest.raises(ProposalCacheError, match=r"counts sum to 5 but boxes are \(4, 4\)"):
        load_proposal_cache(path)


def test_bad_input_shapes_are_rejected_on_save(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image 'a'"):
        save_proposal_cache(tmp_path / "c.pt", {"a": (torch.zeros((3, 5)), torch.zeros(3))}, {})
    assert not (tmp_path / "c.pt").exists()

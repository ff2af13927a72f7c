"""Cached RPN proposals for the alternating training (paper sec. 3.2, steps 2 and 4).

After each RPN step the proposals of every train and test image are computed once
(``DetectorConfig.cache_proposals``: all anchors -> NMS 0.7 -> top 2000) and saved;
the following Fast R-CNN step reads them instead of running the RPN every iteration,
as py-faster-rcnn's ``rpn_generate`` + ``proposal_file`` did.

Shapes: N images, P_i proposals of image i, M = sum P_i.

File content (plain tensors and strings, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "frcnn-proposals/1",
     "fingerprint": str,        # canonical JSON of the fingerprint dict (see below)
     "image_ids": [str] * N,
     "counts": int64 [N],        # P_i
     "boxes": float32 [M, 4],    # original-image pixels, 0-based inclusive, per image by score
     "scores": float32 [M],      # RPN objectness, descending within each image
     "checksum": str}            # sha256 over ids, counts, boxes, scores

The fingerprint names what produced the proposals: the sha256 of the RPN checkpoint
file's bytes, the proposal settings and the image ids (plus whatever the caller adds,
e.g. the input size). A Fast R-CNN step computes the fingerprint it expects from its
own inputs and passes it to ``load_proposal_cache``, which refuses a cache made by
another checkpoint, other settings or other images (``ProposalCacheError`` naming the
file, the expected and the found values). The checksum catches a file that is still a
readable zip but whose content was damaged; a truncated file fails to load at all.
Both are refused with the file's name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.atomic import atomic_torch_save

FORMAT = "frcnn-proposals/1"
_KEYS = ("format", "fingerprint", "image_ids", "counts", "boxes", "scores", "checksum")


class ProposalCacheError(ValueError):
    """A proposal cache cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------- fingerprint


def file_sha256(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_ids_sha256(image_ids: Sequence[str]) -> str:
    """Hex sha256 of the image ids in order, one per line."""
    return hashlib.sha256("".join(f"{image_id}\n" for image_id in image_ids).encode("utf-8")).hexdigest()


def fingerprint_for(
    checkpoint_path: Path | str,
    proposal_cfg: Any,
    image_ids: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The fingerprint of proposals made by ``checkpoint_path`` with ``proposal_cfg`` on ``image_ids``.

    ``proposal_cfg`` is a ``ProposalConfig`` (or a plain dict of its fields). ``extra``
    adds further JSON-able facts that change the proposals (e.g. ``input={"min_size": 600,
    "max_size": 1000}``). The result is plain JSON data, compared key by key.
    """
    if dataclasses.is_dataclass(proposal_cfg) and not isinstance(proposal_cfg, type):
        settings = dataclasses.asdict(proposal_cfg)
    elif isinstance(proposal_cfg, Mapping):
        settings = dict(proposal_cfg)
    else:
        raise TypeError(f"proposal_cfg must be a ProposalConfig or a mapping, got {type(proposal_cfg).__name__}")
    fingerprint: dict[str, Any] = {
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "proposal_config": settings,
        "num_images": len(image_ids),
        "image_ids_sha256": image_ids_sha256(image_ids),
    }
    for key, value in extra.items():
        if key in fingerprint:
            raise ValueError(f"fingerprint key {key!r} is reserved")
        fingerprint[key] = value
    return _canonical(fingerprint)


def _canonical(value: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings, so equal facts compare equal."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"fingerprint must be plain JSON data (no NaN): {error}") from error


def fingerprint_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """One line per differing key: ``key: expected X, found Y`` (nested keys dotted)."""
    lines: list[str] = []

    def walk(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                walk(f"{prefix}.{key}" if prefix else str(key), a.get(key, "<missing>"), b.get(key, "<missing>"))
        elif a != b:
            lines.append(f"{prefix}: expected {a!r}, found {b!r}")

    walk("", _canonical(dict(expected)), _canonical(dict(found)))
    return lines


# ----------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class ProposalCache:
    """Proposals of N images; ``cache[image_id]`` -> ``(boxes [P, 4], scores [P])`` by descending score."""

    path: Path | None
    fingerprint: dict[str, Any]
    image_ids: tuple[str, ...]
    boxes_all: Tensor  # [M, 4]
    scores_all: Tensor  # [M]
    offsets: Tensor  # [N + 1] int64: image i owns rows offsets[i]:offsets[i + 1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids)

    def __getitem__(self, image_id: str) -> tuple[Tensor, Tensor]:
        try:
            i = self._index[image_id]
        except KeyError:
            raise KeyError(f"{self.path}: no proposals for image {image_id!r}") from None
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.boxes_all[start:stop], self.scores_all[start:stop]

    @property
    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {image_id: i for i, image_id in enumerate(self.image_ids)}
            object.__setattr__(self, "_index_cache", index)
        return index

    @property
    def num_proposals(self) -> int:
        return int(self.boxes_all.shape[0])

    def boxes(self, top_n: int | None = None) -> dict[str, Tensor]:
        """``image_id -> [min(P, top_n), 4]``: the form ``train_detector`` and ``proposal_recall`` take."""
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be positive or None, got {top_n}")
        result = {}
        for image_id in self.image_ids:
            boxes, _ = self[image_id]
            result[image_id] = boxes if top_n is None else boxes[:top_n]
        return result

    def items(self) -> Iterator[tuple[str, tuple[Tensor, Tensor]]]:
        for image_id in self.image_ids:
            yield image_id, self[image_id]


def save_proposal_cache(
    path: Path | str,
    proposals: Mapping[str, tuple[Tensor, Tensor]],
    fingerprint: Mapping[str, Any],
) -> Path:
    """Write ``image_id -> (boxes [P, 4], scores [P])`` with ``fingerprint`` to ``path`` atomically.

    Each image's proposals are stored sorted by descending score (stable, so equal
    scores keep the RPN's order). Boxes are in original-image pixels.
    """
    path = Path(path)
    image_ids: list[str] = []
    counts: list[int] = []
    all_boxes: list[Tensor] = []
    all_scores: list[Tensor] = []
    for image_id, entry in proposals.items():
        if not isinstance(image_id, str):
            raise TypeError(f"image ids must be str, got {type(image_id).__name__}")
        boxes, scores = entry
        boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float32)
        scores = torch.as_tensor(scores).detach().to("cpu", torch.float32)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"proposals of image {image_id!r}: expected boxes [P, 4] and scores [P], "
                f"got {tuple(boxes.shape)} and {tuple(scores.shape)}"
            )
        order = torch.sort(scores, descending=True, stable=True).indices
        image_ids.append(image_id)
        counts.append(int(boxes.shape[0]))
        all_boxes.append(boxes[order])
        all_scores.append(scores[order])
    counts_t = torch.tensor(counts, dtype=torch.int64)
    boxes_t = torch.cat(all_boxes).contiguous() if all_boxes else torch.zeros((0, 4))
    scores_t = torch.cat(all_scores).contiguous() if all_scores else torch.zeros((0,))
    content = {
        "format": FORMAT,
        "fingerprint": json.dumps(_canonical(dict(fingerprint)), sort_keys=True),
        "image_ids": image_ids,
        "counts": counts_t,
        "boxes": boxes_t,
        "scores": scores_t,
        "checksum": _checksum(image_ids, counts_t, boxes_t, scores_t),
    }
    atomic_torch_save(content, path)
    return path


def load_proposal_cache(
    path: Path | str, expected_fingerprint: Mapping[str, Any] | None = None
) -> ProposalCache:
    """Read and validate a cache; with ``expected_fingerprint``, refuse one made from other inputs.

    Raises ``ProposalCacheError`` naming ``path`` for a missing, truncated or corrupt
    file, a file that is not a proposal cache, inconsistent content, and a
    fingerprint that differs from the expected one (listing each differing key).
    """
    path = Path(path)
    if not path.is_file():
        raise ProposalCacheError(f"{path}: proposal cache not found (run the RPN step's proposal stage first)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, garbage, disallowed pickle content
        raise ProposalCacheError(
            f"{path}: not a readable proposal cache (truncated, corrupt or not a torch file): {error}"
        ) from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ProposalCacheError(f"{path}: not a proposal cache (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in _KEYS if key not in content]
    if missing:
        raise ProposalCacheError(f"{path}: proposal cache lacks {missing}")
    image_ids, counts, boxes, scores = content["image_ids"], content["counts"], content["boxes"], content["scores"]
    _check_structure(path, image_ids, counts, boxes, scores)
    if content["checksum"] != _checksum(image_ids, counts, boxes, scores):
        raise ProposalCacheError(f"{path}: checksum mismatch: the proposal cache is corrupt; delete it and re-run its stage")
    try:
        fingerprint = json.loads(content["fingerprint"])
    except (TypeError, ValueError) as error:
        raise ProposalCacheError(f"{path}: unreadable fingerprint: {error}") from error
    if not isinstance(fingerprint, dict):
        raise ProposalCacheError(f"{path}: fingerprint is not a mapping")
    stored_ids_hash = fingerprint.get("image_ids_sha256")
    if stored_ids_hash is not None and stored_ids_hash != image_ids_sha256(image_ids):
        raise ProposalCacheError(f"{path}: the cached image ids do not match the fingerprint's; the file is inconsistent")
    if expected_fingerprint is not None:
        differences = fingerprint_differences(expected_fingerprint, fingerprint)
        if differences:
            raise ProposalCacheError(
                f"{path}: proposal cache does not match this step's inputs (stale or from another run); "
                "re-run the proposal stage. Differences: " + "; ".join(differences)
            )
    offsets = torch.zeros(len(image_ids) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, dim=0)
    return ProposalCache(path, fingerprint, tuple(image_ids), boxes, scores, offsets)


def _check_structure(path: Path, image_ids: Any, counts: Any, boxes: Any, scores: Any) -> None:
    if not isinstance(image_ids, list) or not all(isinstance(i, str) for i in image_ids):
        raise ProposalCacheError(f"{path}: image_ids must be a list of strings")
    if len(set(image_ids)) != len(image_ids):
        raise ProposalCacheError(f"{path}: duplicate image ids")
    for name, value, dims in (("counts", counts, 1), ("boxes", boxes, 2), ("scores", scores, 1)):
        if not isinstance(value, Tensor) or value.dim() != dims:
            raise ProposalCacheError(f"{path}: {name} must be a {dims}-d tensor")
    if counts.dtype != torch.int64 or counts.shape[0] != len(image_ids) or bool((counts < 0).any()):
        raise ProposalCacheError(f"{path}: counts must be int64 [N] >= 0 with N = {len(image_ids)} images")
    total = int(counts.sum())
    if boxes.shape != (total, 4) or scores.shape != (total,):
        raise ProposalCacheError(
            f"{path}: counts sum to {total} but boxes are {tuple(boxes.shape)} and scores {tuple(scores.shape)}"
        )
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise ProposalCacheError(f"{path}: boxes and scores must be floating point")
    if total and not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())):
        raise ProposalCacheError(f"{path}: non-finite boxes or scores")
    if total and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        raise ProposalCacheError(f"{path}: boxes with x2 < x1 or y2 < y1")
    # Descending within each image: a rise is allowed only where a new image starts.
    if total > 1:
        rises = (scores[1:] > scores[:-1]).nonzero().flatten() + 1
        starts = set(torch.cumsum(counts, 0)[:-1].tolist())
        bad = [int(r) for r in rises if int(r) not in starts]
        if bad:
            raise ProposalCacheError(f"{path}: scores are not sorted in descending order within an image")


def _checksum(image_ids: Sequence[str], counts: Tensor, boxes: Tensor, scores: Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(image_ids_sha256(image_ids).encode("ascii"))
    for tensor in (counts, boxes, scores):
        digest.update(str(tuple(tensor.shape)).encode("ascii"))
        digest.update(str(tensor.dtype).encode("ascii"))
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()

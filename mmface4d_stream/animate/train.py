"""Training: stream clips of aligned audio features and displacement targets into the network.

Loss per frame (metres -> millimetres): squared vertex error of the whole face (exact through the
orthonormal basis: `||(c_hat - c)||^2`), plus `lip_weight` x the squared error of the lip
vertices, plus `velocity_weight` x the squared error of the frame-to-frame change. A sequence's
targets (`corpus.sequence_targets`) are kept in an in-memory cache bounded by `cache_mb`; beyond
it, sequences are loaded group by group, so the dataset is never held whole.

A checkpoint (`AnimationModel.save`) is written after every epoch, with the optimizer state, so
`resume=True` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmface4d_stream.animate.animator import AnimationModel
from mmface4d_stream.animate.corpus import (CorpusStats, SequenceTargets, compute_corpus_stats, estimate_neutrals,
                                            sequence_targets)
from mmface4d_stream.animate.data import SequenceFiles, discover_sequences, split_by_subject
from mmface4d_stream.animate.encoder import DEFAULT_ENCODER_WINDOW_S, open_encoder
from mmface4d_stream.animate.features import LogMelConfig, LogMelExtractor, last_feature_index
from mmface4d_stream.animate.model import AnimatorConfig, AudioToMotion
from mmface4d_stream.animate.regions import anchors_for, face_regions, load_regions
from mmface4d_stream.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "train"]

MM = 1000.0


@dataclass(frozen=True)
class TrainConfig:
    """Training options (see `mmface4d animate train --help`). Times in frames at 30 fps.

    audio_encoder: a TorchScript speech encoder file whose features replace the log-mel ones
    (`encoder.py`); audio_encoder_rate: its frames per second when the module has no
    `frame_rate_hz` attribute (None: 50 Hz); audio_encoder_window_s: audio each encoder call sees.
    """

    epochs: int = 30
    batch_size: int = 16
    clip_frames: int = 60
    warmup_features: int = 50
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lip_weight: float = 1.0
    velocity_weight: float = 0.5
    val_fraction: float = 0.2
    seed: int = 0
    n_components: int = 32
    hidden: int = 128
    lookahead_ms: float = 66.0
    device: str = "cpu"
    cache_mb: float = 1024.0
    max_minutes: float | None = None
    audio_encoder: str | None = None
    audio_encoder_rate: float | None = None
    audio_encoder_window_s: float = DEFAULT_ENCODER_WINDOW_S

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.clip_frames < 2:
            raise InputError("--epochs and --batch-size must be at least 1 and clips at least 2 frames")
        if not 0 <= self.lookahead_ms <= 100:
            raise InputError(f"--lookahead-ms must be 0..100, got {self.lookahead_ms:g}")


@dataclass(frozen=True)
class TrainResult:
    """model_path: the checkpoint; epochs: completed epochs; train_loss / val_rmse_mm: last epoch's
    values (val None without a validation split); minutes: wall time of this run."""

    model_path: Path
    epochs: int
    train_loss: float
    val_rmse_mm: float | None
    minutes: float


class _TargetCache:
    def __init__(self, stats: CorpusStats | None, extractor, budget_bytes: float,
                 neutrals: dict[str, np.ndarray] | None = None):
        self.stats, self.extractor, self.budget = stats, extractor, budget_bytes
        self.neutrals = neutrals or {}
        self._items: dict[Path, SequenceTargets] = {}
        self._bytes = 0

    def get(self, seq: SequenceFiles) -> SequenceTargets:
        item = self._items.get(seq.wav_path)
        if item is None:
            item = sequence_targets(seq, self.stats, self.extractor, self.neutrals.get(seq.subject))
            while self._items and self._bytes + item.nbytes > self.budget:
                _, old = self._items.popitem()
                self._bytes -= old.nbytes
            self._items[seq.wav_path] = item
            self._bytes += item.nbytes
        return item

    def prime(self, seq: SequenceFiles, item: SequenceTargets) -> None:
        """Keep targets decoded elsewhere (the corpus statistics' last pass) while they fit the budget."""
        if seq.wav_path not in self._items and self._bytes + item.nbytes <= self.budget:
            self._items[seq.wav_path] = item
            self._bytes += item.nbytes


def _groups(sequences: list[SequenceFiles], cache_budget: float, rng: random.Random,
            n_features: int = 40) -> list[list[SequenceFiles]]:
    """Shuffled sequences in groups whose targets fit the cache (estimated from frame counts and
    `n_features` audio features per 10 ms)."""
    order = sequences[:]
    rng.shuffle(order)
    groups, current, size = [], [], 0.0
    for seq in order:
        est = seq.n_frames * 4 * (64 + n_features * 100 / seq.fps)
        if current and size + est > cache_budget:
            groups.append(current)
            current, size = [], 0.0
        current.append(seq)
        size += est
    if current:
        groups.append(current)
    return groups


def _make_batch(items: list[tuple[SequenceTargets, int, int, int]], model: AnimationModel, warmup: int):
    """Clips (targets, first frame, frames, subject index) -> padded tensors."""
    feats, coeffs, idx, subjects = [], [], [], []
    lengths = []
    for tg, a, n, subj in items:
        j = last_feature_index(np.arange(a, a + n), model.fps, model.lookahead_samples, model.feature_config)
        j = np.clip(j, 0, len(tg.features) - 1)
        f0 = max(0, int(j[0]) - warmup)
        f1 = int(j[-1]) + 1
        feats.append(torch.from_numpy(tg.features[f0:f1]))
        idx.append(torch.from_numpy(j - f0))
        coeffs.append(torch.from_numpy(tg.coeffs[a:a + n]))
        subjects.append(subj)
        lengths.append(n)
    T = max(len(f) for f in feats)
    L = max(lengths)
    F = feats[0].shape[1]
    K = coeffs[0].shape[1]
    fb = torch.zeros(len(items), T, F)
    cb = torch.zeros(len(items), L, K)
    ib = torch.zeros(len(items), L, dtype=torch.int64)
    mb = torch.zeros(len(items), L)
    for b in range(len(items)):
        fb[b, :len(feats[b])] = feats[b]
        cb[b, :lengths[b]] = coeffs[b]
        ib[b, :lengths[b]] = idx[b]
        mb[b, :lengths[b]] = 1.0
    return fb, cb, ib, mb, torch.tensor(subjects)


def _loss(model: AnimationModel, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
          lip_basis: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """z (B, L, K) normalized outputs at the mesh frames; target (B, L, K) metres; mask (B, L)."""
    std = torch.from_numpy(model.stats.coeff_std).to(z.device)
    err = (z * std - target) * MM
    n = mask.sum().clamp(min=1)
    face = (err.square().sum(-1) * mask).sum() / n
    lips = ((err @ lip_basis).square().sum(-1) * mask).sum() / n
    vel_mask = mask[:, 1:] * mask[:, :-1]
    vel = ((err[:, 1:] - err[:, :-1]).square().sum(-1) * vel_mask).sum() / vel_mask.sum().clamp(min=1)
    return face + config.lip_weight * lips + config.velocity_weight * vel


def _epoch_batches(sequences, cache, subject_index, config, rng):
    for group in _groups(sequences, config.cache_mb * 2**20, rng, len(cache.stats.feature_mean)):
        clips = []
        for seq in group:
            tg = cache.get(seq)
            n = len(tg.coeffs)
            start = rng.randrange(min(config.clip_frames, n)) if n > config.clip_frames else 0
            if start > 0:
                clips.append((tg, 0, start, subject_index[seq.subject]))
            for a in range(start, n, config.clip_frames):
                clips.append((tg, a, min(config.clip_frames, n - a), subject_index[seq.subject]))
        rng.shuffle(clips)
        for b in range(0, len(clips), config.batch_size):
            yield clips[b:b + config.batch_size]


@torch.no_grad()
def _validate(model: AnimationModel, sequences: list[SequenceFiles], cache: _TargetCache) -> float:
    """Vertex RMSE (mm) of whole validation sequences, run offline from their start (mean style)."""
    model.net.eval()
    sq, n = 0.0, 0
    style = model.style(None)
    std = torch.from_numpy(model.stats.coeff_std)
    for seq in sequences:
        tg = cache.get(seq)
        z = model.net(torch.from_numpy(tg.features)[None], style[None])[0]
        idx = torch.from_numpy(model.feature_indices(len(tg.coeffs), len(z)))
        err = (z[idx] * std - torch.from_numpy(tg.coeffs)) * MM
        sq += float(err.square().sum())
        n += len(tg.coeffs) * model.n_vertices
    return math.sqrt(sq / max(n, 1))


def _first_frame(seq: SequenceFiles) -> np.ndarray:
    from mmface4d_stream.formats.mesh_nut import MeshNutReader

    with MeshNutReader(seq.mesh_prefix, n_vertices=seq.n_vertices, threads=1) as reader:
        return reader[0]


def train(data_dirs: list[str | os.PathLike], out: str | os.PathLike, config: TrainConfig = TrainConfig(),
          resume: bool = False, landmark_mapping: str | os.PathLike | None = None,
          regions_path: str | os.PathLike | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) a model on every sequence under `data_dirs`; writes `out` each epoch."""
    from tqdm import tqdm

    started = time.monotonic()
    out = Path(out)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but torch sees no CUDA device")
    sequences = discover_sequences(data_dirs)

    feature_config = LogMelConfig()
    primed = None
    if resume and out.is_file():
        model = AnimationModel.load(out, device="cpu")
        extractor = model.extractor()
        trained_with = None if model.encoder is None else model.encoder.spec.path
        asked = None if config.audio_encoder is None else str(Path(config.audio_encoder).expanduser().resolve())
        if asked != trained_with:
            raise InputError(f"cannot resume with --audio-encoder {asked or '(none)'}: the run was started with "
                             f"{trained_with or 'log-mel features'}", out)
        if model.training.get("config", {}).get("n_components") is None:
            raise InputError("checkpoint holds no training state to resume", out)
        split = model.training["split"]
        by_path = {str(s.wav_path): s for s in sequences}
        missing = [p for p in split["train"] + split["val"] if p not in by_path]
        if missing:
            raise InputError(f"cannot resume: {len(missing)} training sequence(s) are gone (e.g. {missing[0]})", out)
        train_seqs = [by_path[p] for p in split["train"]]
        val_seqs = [by_path[p] for p in split["val"]]
        start_epoch = int(model.training["epoch"])
        logger.info("resuming %s after epoch %d", out, start_epoch)
    else:
        extractor = LogMelExtractor(feature_config) if config.audio_encoder is None else open_encoder(
            config.audio_encoder, config.audio_encoder_rate, config.audio_encoder_window_s, config=feature_config)
        n_features = feature_config.n_mels if config.audio_encoder is None else extractor.n_features
        train_seqs, val_seqs = split_by_subject(sequences, config.val_fraction, config.seed)
        first = _first_frame(train_seqs[0])
        if regions_path is not None:
            regions = load_regions(regions_path, len(first))
        else:
            regions = face_regions(first, anchors_for(len(first), landmark_mapping))
        primed = _TargetCache(None, extractor, config.cache_mb * 2**20)
        stats = compute_corpus_stats(train_seqs, regions, first, extractor, config.n_components, progress,
                                     keep=primed.prime)
        subjects = stats.subjects
        faces_path = train_seqs[0].faces_path
        faces = None
        if faces_path is not None:
            from mmface4d_stream.formats.faces import load_faces

            faces = load_faces(faces_path, len(first))
        net_config = AnimatorConfig(n_features=n_features, n_components=len(stats.basis),
                                    n_subjects=len(subjects), hidden=config.hidden, lookahead_ms=config.lookahead_ms)
        model = AnimationModel(net_config, feature_config, train_seqs[0].fps, AudioToMotion(net_config), stats,
                               subjects, faces, encoder=None if config.audio_encoder is None else extractor)
        model.training = {"epoch": 0, "history": [],
                          "split": {"train": [str(s.wav_path) for s in train_seqs],
                                    "val": [str(s.wav_path) for s in val_seqs]},
                          "elapsed_s": 0.0}
        start_epoch = 0
    model.training["config"] = asdict(config)
    elapsed_before = float(model.training.get("elapsed_s", 0.0))

    net = model.net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_epochs = config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * min(e, total_epochs) / total_epochs)))
    if "optimizer" in model.training:
        optimizer.load_state_dict(model.training["optimizer"])
        scheduler.load_state_dict(model.training["scheduler"])
    # Validation subjects are unseen: their neutral faces come from their own silent frames.
    val_neutrals = estimate_neutrals(val_seqs, model.stats.reference, model.stats.regions.upper_face,
                                     feature_config.rate) if val_seqs else {}
    # A new run's cache already holds the targets the statistics' last pass decoded.
    cache = primed if primed is not None else _TargetCache(None, extractor, config.cache_mb * 2**20)
    cache.stats, cache.neutrals = model.stats, val_neutrals
    subject_index = {s: i for i, s in enumerate(model.subjects)}
    lips = model.stats.regions.lips
    basis = model.stats.basis.reshape(len(model.stats.basis), -1, 3)
    lip_basis = torch.from_numpy(basis[:, lips].reshape(len(basis), -1).copy()).to(device)
    rng.seed(config.seed * 1000 + start_epoch)

    train_loss, val_rmse = float("nan"), None
    epoch = start_epoch
    out_of_time = False
    bar = tqdm(total=total_epochs, initial=start_epoch, desc="train", unit="epoch", disable=not progress)
    try:
        for epoch in range(start_epoch + 1, total_epochs + 1):
            net.train()
            losses = []
            for batch in _epoch_batches(train_seqs, cache, subject_index, config, rng):
                fb, cb, ib, mb, sb = (t.to(device) for t in _make_batch(batch, model, config.warmup_features))
                z = net(fb, net.styles(sb))
                z = torch.gather(z, 1, ib[..., None].expand(-1, -1, z.shape[-1]))
                loss = _loss(model, z, cb, mb, lip_basis, config)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                optimizer.step()
                losses.append(float(loss.detach()))
                if config.max_minutes is not None and time.monotonic() - started > config.max_minutes * 60:
                    out_of_time = True
                    break
            scheduler.step()
            train_loss = float(np.mean(losses)) if losses else float("nan")
            net.cpu()  # validation and the checkpoint on the CPU
            val_rmse = _validate(model, val_seqs, cache) if val_seqs else None
            model.training["history"].append({"epoch": epoch, "train_loss": train_loss, "val_rmse_mm": val_rmse})
            model.training.update(epoch=epoch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                  elapsed_s=elapsed_before + time.monotonic() - started)
            model.save(out)
            net.to(device)
            bar.set_postfix(loss=f"{train_loss:.3g}", val_mm="-" if val_rmse is None else f"{val_rmse:.2f}")
            bar.update(1)
            if out_of_time:
                logger.info("time budget of %.3g min reached after epoch %d", config.max_minutes, epoch)
                break
    finally:
        bar.close()
        net.cpu()
    return TrainResult(out, epoch, train_loss, val_rmse, (time.monotonic() - started) / 60.0)

"""The data stage of a run: load the splits, compute the statistics the model normalises with,
fix the number of clusters against the data, and place the training images where the loop
reads them (resident on the device, gathered from host memory, or streamed from disk).

With ``data.features`` (an encoder spec, ``--features``) every split is opened as images and
embedded by that encoder (:func:`deepclust.pretrained.embed`, through the on-disk cache under
``data.cache_dir``): the run trains in feature mode on :class:`EmbeddedFeatures`, which keep
the embedding's record and the image paths for the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from deepclust.collectives import Collectives
from deepclust.config import Config
from deepclust.config_rules import check_n_clusters
from deepclust.data import ImageData, StreamData, open_dataset
from deepclust.data.base import FeatureData
from deepclust.data.crops import ViewSpec
from deepclust.engine.fastpath import FastPaths
from deepclust.engine.loader import BatchStream
from deepclust.engine.stream_loader import StreamLoader
from deepclust.errors import ConfigError, DataError
from deepclust.methods import ClusteringMethod, DataInfo

__all__ = [
    "EmbeddedFeatures",
    "create_run_encoder",
    "data_info",
    "embed_images",
    "embedded_features",
    "load_data",
    "n_clusters",
    "open_images",
    "open_split",
    "place_data",
]

log = logging.getLogger(__name__)


@dataclass
class EmbeddedFeatures(FeatureData):
    """:class:`FeatureData` computed by a pretrained encoder from an image dataset (``name``
    stays the image dataset's). ``embedding``: what the result record stores under
    ``"embedding"`` (model, weights_hash, preprocess, dim, cache); ``image_paths``: the image
    files of a folder, row by row (None for other datasets)."""

    embedding: dict[str, Any] | None = None
    image_paths: list[str] | None = None


def open_images(cfg: Config, split: str, image_size: int | None = None) -> ImageData | StreamData:
    """One split of ``cfg.data`` as images: in memory at its stored size, or streamed
    (data/open.py). ``image_size`` replaces ``data.image_size`` (e.g. a display size)."""
    d = cfg.data
    return open_dataset(
        d.name,
        split,
        d.data_dir,
        image_size or d.image_size,
        stored_size=d.stored_size,
        stream=d.stream,
        memory_budget_gb=d.memory_budget_gb,
        eval_crop=d.eval_crop,
        decoder=d.decoder,
        workers=d.workers,
    )


def open_split(
    cfg: Config, split: str, device: torch.device | str | None = None, encoder: Any = None
) -> ImageData | StreamData:
    """One split of ``cfg.data``: the images (:func:`open_images`), or with ``data.features``
    their embedding (:func:`embed_images`, on ``device``; default ``train.device``)."""
    if cfg.data.features:
        return embed_images(cfg, split, device, encoder)
    return open_images(cfg, split)


def create_run_encoder(cfg: Config) -> Any:
    """The encoder of ``data.features`` at ``data.features_size`` (a bad spec fails here, one line)."""
    from deepclust.pretrained import create_encoder  # local: timm and the weights load only for --features

    return create_encoder(str(cfg.data.features), cfg.data.features_size)


def embed_images(
    cfg: Config, split: str, device: torch.device | str | None = None, encoder: Any = None, check_k: bool = False
) -> EmbeddedFeatures:
    """The embedding of split ``split`` of ``cfg.data`` by ``data.features`` (computed once into
    the cache ``data.cache_dir``, then reused), as :class:`EmbeddedFeatures`. In-memory folders
    are read at the encoder's resize size (as ``deepclust embed`` reads them, so both share a
    cache); one info line gives N, D, whether the cache was reused and its folder. ``check_k``:
    check ``n_clusters`` against the images found before the encoder runs."""
    from deepclust.pretrained import embed  # local: see create_run_encoder

    d = cfg.data
    enc = encoder if encoder is not None else create_run_encoder(cfg)
    folder = d.name.strip().lower().startswith("folder:")
    images = open_images(cfg, split, d.image_size or (enc.preprocess.resize_size if folder else None))
    if images.n_samples == 0:
        raise DataError(f"dataset '{d.name}' split '{split}' holds no images")
    if check_k and cfg.n_clusters is not None:
        check_n_clusters(cfg.n_clusters, images.n_samples, "training images")
    emb = embed(
        images,
        enc,
        d.cache_dir,
        device=device if device is not None else cfg.train.device,
        amp=cfg.train.amp,
        progress=cfg.train.progress,
    )
    log.info(
        "features %s of %s (split %s): %d images x %d features, %s; cache %s",
        enc.spec,
        d.name,
        split,
        emb.n_samples,
        emb.dim,
        "reused" if emb.reused else f"computed in {emb.seconds:.1f} s",
        emb.path,
    )
    return embedded_features(emb, enc.spec)


def embedded_features(emb: Any, spec: str) -> EmbeddedFeatures:
    """An :class:`~deepclust.pretrained.Embedding` as in-memory :class:`EmbeddedFeatures`, with
    the record entry of the encoder (model, weights hash, preprocessing, D, cache folder, spec)."""
    m = emb.manifest
    record = {
        "model": m.get("model"),
        "weights_hash": m.get("weights_hash"),
        "preprocess": m.get("preprocess"),
        "dim": int(m.get("dim", emb.dim)),
        "cache": str(emb.path),
        "spec": spec,
    }
    return emb.as_feature_data(EmbeddedFeatures, embedding=record, image_paths=emb.paths)


def load_data(
    cfg: Config,
    data: ImageData | tuple[ImageData, ImageData] | None = None,
    device: torch.device | str | None = None,
) -> tuple[ImageData | StreamData, ImageData | StreamData]:
    """The training and the evaluated images (the same object under train+test).

    ``data``: in-memory data from the caller (e.g. the estimator) used instead of reading
    ``cfg.data.name``: one :class:`ImageData` / :class:`FeatureData` (trained and evaluated)
    or a (train, eval) pair. ``cfg.data.name`` then only names the data in the records.
    With ``data.features`` the splits are embedded on ``device`` (:func:`embed_images`); the
    encoder is built (and ``n_clusters`` checked against the images) before anything is embedded.
    """
    d = cfg.data
    train: ImageData | StreamData
    evald: ImageData | StreamData
    if data is not None:
        train, evald = (data, data) if isinstance(data, ImageData) else data
        if not (isinstance(train, ImageData) and isinstance(evald, ImageData)):
            raise DataError("in-memory data must be an ImageData or FeatureData, or a (train, eval) pair of them")
    elif d.features:
        enc = create_run_encoder(cfg)  # an unknown encoder fails before any image is read
        train = embed_images(cfg, d.train_split, device, enc, check_k=True)
        evald = train if d.eval_split == d.train_split else embed_images(cfg, d.eval_split, device, enc)
    else:
        train = open_split(cfg, d.train_split)
        evald = train if d.eval_split == d.train_split else open_split(cfg, d.eval_split)
    if train.n_samples == 0:
        raise DataError(f"dataset '{d.name}' split '{d.train_split}' holds no images")
    return train, evald


def data_info(cfg: Config, train: ImageData | StreamData, evald: ImageData | StreamData) -> DataInfo:
    """Image size, channel statistics and the number of clusters, checked against the data."""
    if isinstance(train, FeatureData) or isinstance(evald, FeatureData):
        return _feature_info(cfg, train, evald)
    size = cfg.data.image_size or int(train.images.shape[-1])
    c = train.n_channels
    if isinstance(train, StreamData) and (cfg.data.mean is None or cfg.data.std is None):
        mean, std = train.channel_stats(seed=cfg.train.seed)  # a seeded sample of files, decoded
    elif cfg.data.mean is None or cfg.data.std is None:
        # Statistics of the training images, on a sample to keep this cheap for big sets.
        x = _sample(train).float().div_(255).transpose(0, 1).reshape(c, -1)
        mean, std = x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()
    else:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"data.mean/std have {len(mean)} values but the images have {c} channel(s)")
    k = n_clusters(cfg, train, evald)
    return DataInfo(n_samples=train.n_samples, n_channels=c, image_size=size, mean=mean, std=std, n_clusters=k)


def _feature_info(cfg: Config, train: ImageData | StreamData, evald: ImageData | StreamData) -> DataInfo:
    """Feature mode: per-dimension mean/std of the training features, L2-normalised first where
    ``augment.feature_l2`` says so, as the views see them (``data.mean``/``std`` override them
    with D values each). The std is floored at 1% of its mean over dimensions, so
    near-constant dimensions are not blown up into noise."""
    if not (isinstance(train, FeatureData) and isinstance(evald, FeatureData)) or train.n_features != evald.n_features:
        raise DataError("the trained and the evaluated data must both be feature vectors of the same length D")
    dim = train.n_features
    if cfg.data.mean is None or cfg.data.std is None:
        x = _sample(train).double()
        if cfg.augment.feature_l2:
            x = torch.nn.functional.normalize(x, dim=1)
        sd = x.std(0) if len(x) > 1 else torch.ones(dim, dtype=torch.float64)
        mean, std = x.mean(0).tolist(), sd.clamp_min(max(1e-2 * float(sd.mean()), 1e-6)).tolist()
    else:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    if len(mean) != dim or len(std) != dim:
        raise ConfigError(f"data.mean/std have {len(mean)} values but the feature vectors have {dim} dimensions")
    k = n_clusters(cfg, train, evald)
    return DataInfo(
        n_samples=train.n_samples,
        n_channels=1,
        image_size=1,
        mean=[0.0],
        std=[1.0],
        n_clusters=k,
        n_features=dim,
        feature_mean=mean,
        feature_std=std,
    )


def _sample(train: ImageData | StreamData) -> torch.Tensor:
    """Up to 10,000 training rows, the same ones every time: statistics stay cheap for big sets."""
    return train.images[torch.randperm(train.n_samples, generator=torch.Generator().manual_seed(0))[:10000]]


def n_clusters(cfg: Config, train: ImageData | StreamData, evald: ImageData | StreamData) -> int:
    """``cfg.n_clusters``, or the number of classes of the evaluated data; checked against N."""
    k = cfg.n_clusters
    if k is None:
        if not evald.has_labels:
            raise ConfigError("the data has no labels, so the number of clusters is unknown: pass --n-clusters K")
        k = evald.n_classes
    return check_n_clusters(k, train.n_samples, "training images")


def place_data(
    train: ImageData | StreamData,
    method: ClusteringMethod,
    cfg: Config,
    device: torch.device,
    fast: FastPaths,
    dist: Collectives,
) -> tuple[Any, BatchStream | StreamLoader | None]:
    """The training images where the loop reads them and the stream that delivers the batches
    (None: indexed from a resident tensor): streamed from disk (engine/stream_loader.py),
    resident on the device, or gathered from host memory (engine/loader.py). The images are
    what :meth:`ClusteringMethod.setup` sees."""
    if isinstance(train, StreamData):  # decoded from disk by workers (engine/stream_loader.py)
        images = train.view(ViewSpec("plain"))  # what setup() sees: the whole images, resized
        return images, StreamLoader(
            train,
            method.stream_views(),
            device,
            cfg.train.seed,
            workers=cfg.data.workers,
            gpu_decode=cfg.data.gpu_decode,
        )
    if fast.data_on_device:
        return train.images.to(device), None
    # too big for the device: batches stream from host memory (engine/loader.py)
    return train.images, BatchStream(train.images, device, max(1, cfg.train.batch_size // dist.world))

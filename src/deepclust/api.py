"""``DeepClusterer``: the scikit-learn estimator over every deepclust method.

    from deepclust import DeepClusterer
    labels = DeepClusterer(method="idfd", n_clusters=10, random_state=0).fit_predict(images)

``fit`` trains with the library's own engine (:class:`deepclust.engine.Trainer`, in-memory
data, a temporary run directory unless ``out`` is given) and keeps the trained method in
memory; ``predict`` applies the run's prediction rule to new data (nearest k-means centre for
k-means methods, IDFD; argmax of the cluster head for head methods, SeCu / CDC / AnchorCL);
``transform`` returns the learned embedding (the features the method clusters or, for head
methods, the features its head reads: the method's ``infer`` features on the clean view).

Inputs (``X``):

- images as a NumPy array (N, H, W) or (N, H, W, C) with C in {1, 3}; (N, C, H, W) is also
  taken when unambiguous (C in {1, 3} in position 1 only). uint8 0..255, other integers
  within 0..255, or floats: a float array whose maximum is <= 1 is read as [0, 1], otherwise as
  [0, 255]; floats are rounded to uint8 (the image pipelines run on uint8 batches);
- a torch tensor, read like the array except that the ambiguous 4-D case (C in {1, 3} in both
  positions 1 and 3) is taken as (N, C, H, W), PyTorch's layout (NumPy: (N, H, W, C));
- a :class:`deepclust.data.ImageData` (e.g. from :func:`deepclust.load_dataset`);
- a 2-D array or tensor (N, D): precomputed feature vectors ("feature mode"). An MLP replaces
  the CNN and each method's augmentations become Gaussian noise + dropout on standardised
  features (:mod:`deepclust.augment.features`).

With ``features="timm:NAME"`` (any encoder spec of :mod:`deepclust.pretrained`) the images are
embedded by that pretrained encoder (through the embedding cache: ``config={"data":
{"cache_dir": ...}}``, else the default root; ``"features_size"`` sets its input size) and the
method clusters the embeddings in feature mode; ``predict`` and ``transform`` embed new images
with the same encoder.

``y`` is never used for training; when given, the fit is scored with it in ``record_``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import numbers
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from deepclust._version import __version__
from deepclust.cluster import assign_to_centers
from deepclust.config import Config, TrainConfig, deep_merge, resolve_config
from deepclust.config_rules import check_n_clusters
from deepclust.data import ImageData
from deepclust.data.base import FeatureData
from deepclust.data.peek import shape_of
from deepclust.engine import io
from deepclust.engine.device import amp_dtype, resolve_device, rng_state, set_rng_state
from deepclust.engine.evaluate import infer_images
from deepclust.engine.trainer import Trainer
from deepclust.errors import CheckpointError, ConfigError, DataError, DataTypeError
from deepclust.methods import ClusteringMethod, DataInfo, create_method, get_method_class

log = logging.getLogger(__name__)

__all__ = ["SKLEARN_EXPECTED_FAILED_CHECKS", "DeepClusterer", "as_data", "default_epochs"]

FORMAT = "deepclust.DeepClusterer"
FORMAT_VERSION = 1

# Default training length, as optimisation steps: epochs = steps * batch / N, clipped.
# 2,000 steps is IDFD's Fashion-MNIST budget (25 epochs of 10,000 images at batch 128);
# the MLP of feature mode is cheap per step and gets 3,000.
_IMAGE_STEPS, _FEATURE_STEPS = 2000, 3000
_MIN_EPOCHS, _MAX_EPOCHS = 10, 200


def default_epochs(n_samples: int, batch_size: int, features: bool) -> int:
    """``ceil(S * batch_size / n_samples)`` within [10, 200], S = 2,000 steps for images and
    3,000 for feature vectors: short runs see every sample often, big ones stop at 10 epochs."""
    steps = _FEATURE_STEPS if features else _IMAGE_STEPS
    return int(min(_MAX_EPOCHS, max(_MIN_EPOCHS, math.ceil(steps * batch_size / max(n_samples, 1)))))


def default_batch_size(method: str, n_samples: int) -> int:
    """The method's configured batch size, capped at N / 4 (at least 2) so small data still
    takes several steps per epoch."""
    bs = get_method_class(method).defaults().get("train", {}).get("batch_size", TrainConfig.batch_size)
    return int(max(2, min(bs, n_samples // 4)))


# ----- inputs --------------------------------------------------------------------------------
def _image_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 copy of an image array by the rule of the module docstring (any layout)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"X has dtype {arr.dtype}; expected uint8 0..255 or float images in [0, 1] or [0, 255]")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError("X contains NaN or infinite values; remove or replace them before clustering")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"float images must lie in [0, 1] or [0, 255] (found {lo:g}..{hi:g}); rescale them")
        return np.rint(arr * 255.0 if hi <= 1.0 else arr).astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise DataError(f"integer images must lie in 0..255 (found {lo}..{hi}); rescale them or pass uint8")
    return arr.astype(np.uint8)


def _channels_last(arr: np.ndarray, from_tensor: bool) -> np.ndarray:
    """(N, H, W, C) view of a 4-D image array in either layout (see the module docstring)."""
    last, first = arr.shape[3] in (1, 3), arr.shape[1] in (1, 3)
    if first and (not last or from_tensor):
        return arr.transpose(0, 2, 3, 1)
    if last:
        return arr
    raise DataError(
        f"X has shape {arr.shape}: a 4-D image array needs 1 or 3 channels, as (N, H, W, C) or (N, C, H, W)"
    )


def as_data(X: Any, y: Any = None, name: str = "array") -> ImageData:
    """Any accepted input (module docstring) as :class:`ImageData` or :class:`FeatureData`.

    ``y`` (optional, integer labels, -1 = unknown) becomes the labels used to score records;
    a ``y`` that is not one integer label per sample is ignored, as scikit-learn clusterers do.
    """
    if isinstance(X, ImageData):
        lab = _score_labels(y, X.n_samples)
        return X if lab is None else dataclasses.replace(X, labels=torch.from_numpy(lab))
    if scipy.sparse.issparse(X):
        raise DataError("sparse input is not supported; pass a dense array (X.toarray())")
    from_tensor = isinstance(X, torch.Tensor)
    if from_tensor:
        X = X.detach().cpu().numpy()
    try:
        arr = np.asarray(X)
        if arr.dtype == object:  # e.g. numbers from a DataFrame of mixed columns
            arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataTypeError(
            f"X of type {type(X).__name__} is not a numeric array ({str(exc).splitlines()[0]}); "
            "pass a NumPy array, tensor or ImageData of equal-sized images or feature vectors"
        ) from None
    if np.iscomplexobj(arr):
        raise DataError("Complex data not supported; pass real-valued feature vectors or images")
    if arr.ndim in (2, 3, 4) and arr.shape[0] == 0:
        raise DataError(
            f"X has 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required; pass at least n_clusters samples"
        )
    lab = _score_labels(y, arr.shape[0] if arr.ndim else 0)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise DataError(
                f"X has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required; "
                "pass non-empty feature vectors"
            )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise DataError("X contains NaN or infinite values; remove or impute them before clustering")
        return FeatureData.from_arrays(arr, lab, name=name if name != "array" else "features")
    if arr.ndim == 4:
        arr = _channels_last(arr, from_tensor)
    elif arr.ndim != 3:
        raise DataError(
            f"X has rank {arr.ndim} (shape {arr.shape}); expected feature vectors (N, D), grayscale images "
            "(N, H, W) or colour images (N, H, W, C)"
        )
    return ImageData.from_arrays(_image_uint8(arr), lab, name=name)


def _score_labels(y: Any, n: int) -> np.ndarray | None:
    """int64 labels from ``y`` when it is one integer per sample, else None (with a warning)."""
    if y is None:
        return None
    try:
        lab = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
        ok = lab.ndim == 1 and lab.shape[0] == n and lab.dtype != object
        ok = ok and bool(np.isfinite(lab).all() and (lab == np.round(lab)).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        log.info("y is not one integer label per sample; it is ignored (it is only used to score the fit)")
        return None
    return lab.astype(np.int64)


def _seed(random_state: Any) -> int:
    """One int seed: None -> 0 (reproducible by default), an int, or a draw from a NumPy RNG."""
    if random_state is None:
        return 0
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if not 0 <= int(random_state) < 2**32:
            raise ConfigError(f"random_state must be in [0, 2**32), got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ConfigError(f"random_state must be None, an int or a NumPy random generator, got {random_state!r}")


def _plain(obj: Any) -> Any:
    """JSON-like copy (dicts, lists, str, numbers, None) so ``torch.load(weights_only=True)`` reads it."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# scikit-learn's checks that cannot pass, each with the reason; pass it to
# ``sklearn.utils.estimator_checks.check_estimator(est, expected_failed_checks=...)``. Each of
# these sets n_clusters=1, which DeepClusterer rejects: one cluster needs no training, and the
# methods' losses (instance discrimination against other clusters, Sinkhorn balance, Student-t
# assignment) have nothing to separate. The suite runs check_estimator whole with this list.
_K1 = "sets n_clusters=1; deep clustering needs K >= 2 (one cluster needs no network) and rejects it with a ConfigError"
SKLEARN_EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_dont_overwrite_parameters": _K1,
    "check_methods_subset_invariance": _K1,
    "check_fit2d_1feature": _K1,
    "check_fit2d_predict1d": _K1,
}


# ----- the estimator ---------------------------------------------------------------------------
class DeepClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Deep clustering with the scikit-learn estimator contract.

    Parameters
    ----------
    method : a name from :func:`deepclust.methods.list_methods`; one that clusters feature vectors
        only (``accepts_images`` False: "scan") needs vectors or ``features=``.
    n_clusters : number of clusters K, 2 <= K <= number of samples.
    backbone : "auto" (small CNN for small grayscale images, ResNet-18 otherwise, MLP for
        feature vectors) or a name from :func:`deepclust.models.list_backbones`.
    epochs : None: :func:`default_epochs` (about 2,000 steps for images, 3,000 for feature
        vectors, within 10..200 epochs).
    batch_size : None: the method's own (128; CDC 256), capped at N / 4.
    lr : None: the method's learning rate.
    device : "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N", "mps".
    random_state : None (= 0), an int or a NumPy generator: the one seed of the run (network
        initialisation, augmentation, batch order, k-means). Runs on the CPU are reproducible.
    method_options : the method's options (``method_args`` of a config), e.g. ``{"n_heads": 3}``.
    config : nested config overrides applied last, e.g. ``{"optim": {"schedule": "cosine"}}``.
    out : a run directory to keep (config, metrics, results, checkpoint); None: a temporary one.
    verbose : show the progress bar.
    features : None (train on X itself) or an encoder spec (``timm:NAME[@PATH]``,
        ``torchvision:ARCH.WEIGHTS[@PATH]``): images are embedded by that pretrained encoder
        (cached on disk) and the method clusters the embeddings; X must then be images.

    Attributes
    ----------
    labels_ : (N,) int64, the cluster of every training sample (equal to ``predict(X)``).
    cluster_centers_ : (K, D) float32 in the space of :meth:`transform`: the k-means centres
        for k-means methods (IDFD), the mean embedding of each cluster's training samples for
        head methods (a row of NaN for a cluster that holds none).
    n_features_in_ : D (feature mode only). ``input_shape_``: one sample's shape, (D,) or (C, H, W).
    config_ : the resolved :class:`deepclust.Config` of the run. ``record_``: its result record.
    seed_ : the seed the run used. ``run_dir_``: ``out`` when given, else None.
    method_ : the trained :class:`deepclust.methods.ClusteringMethod`, in eval mode.

    ``labels_`` and ``predict`` both assign the clean-view embedding, so they agree; with the
    IDFD option ``config={"eval": {"features": "memory"}}`` the centres come from the memory
    bank and ``record_`` scores the memory bank's own labels, which may differ slightly.
    """

    def __init__(
        self,
        method: str = "idfd",
        n_clusters: int = 10,
        backbone: str = "auto",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        device: str = "auto",
        random_state: Any = None,
        method_options: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        out: str | None = None,
        verbose: bool = False,
        features: str | None = None,
    ) -> None:
        # scikit-learn contract: store verbatim, validate in fit.
        self.method = method
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.method_options = method_options
        self.config = config
        self.out = out
        self.verbose = verbose
        self.features = features

    # ----- configuration -----------------------------------------------------------------------
    def _check_method(self) -> None:
        if not isinstance(self.method, str):
            raise ConfigError(f"method must be a name such as 'idfd', got {self.method!r}")
        get_method_class(self.method)  # unknown names raise with the closest match

    def _check_params(self, n_samples: int) -> None:
        k = self.n_clusters
        if n_samples < 2:  # before the n_clusters rule: the data, not K, is what is wrong here
            raise DataError(f"X has n_samples={n_samples}; clustering needs at least 2 samples")
        check_n_clusters(k, n_samples)  # the rule the trainer's data stage applies
        for name, low in (("epochs", 1), ("batch_size", 2)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low):
                raise ConfigError(f"{name} must be None or an integer >= {low}, got {v!r}")
        if self.lr is not None and (not isinstance(self.lr, numbers.Real) or not self.lr > 0):
            raise ConfigError(f"lr must be None or a positive number, got {self.lr!r}")
        for name in ("method_options", "config"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be None or a dict, got {type(getattr(self, name)).__name__}")
        if self.features is not None and (not isinstance(self.features, str) or not self.features.strip()):
            raise ConfigError(f"features must be None or an encoder spec such as 'timm:NAME', got {self.features!r}")

    def _build_config(self, data: ImageData, out: str) -> Config:
        n, features = data.n_samples, isinstance(data, FeatureData)
        seed = _seed(self.random_state)
        bs = int(self.batch_size) if self.batch_size is not None else default_batch_size(self.method, n)
        epochs = int(self.epochs) if self.epochs is not None else default_epochs(n, bs, features)
        raw: dict[str, Any] = {
            "method": self.method,
            "n_clusters": int(self.n_clusters),
            # in-memory data: the name only labels records; fit and evaluation on the same X
            "data": {"name": data.name, "train_split": data.split, "eval_split": data.split},
            "model": {"backbone": self.backbone},
            "train": {
                "epochs": epochs,
                "batch_size": bs,
                "seed": seed,
                "device": self.device,
                "out": out,
                "progress": bool(self.verbose),
                # a temporary run is never resumed: checkpoint once, at the end
                "checkpoint_every": epochs if self.out is None else 1,
            },
            "eval": {"kmeans_seed": seed},
            "method_args": copy.deepcopy(self.method_options or {}),
        }
        if self.lr is not None:
            raw["optim"] = {"lr": float(self.lr)}
        if self.features is not None:  # recorded: the config says which encoder made the features
            raw["data"]["features"] = self.features
        # defaults by data kind (deepclust/presets.py) from X's own shape, not from a file
        return resolve_config(
            deep_merge(raw, copy.deepcopy(self.config or {})), shape=shape_of(tuple(data.images.shape)), auto=True
        )

    # ----- fit ------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> DeepClusterer:
        """Train the method on X.

        Parameters
        ----------
        X : images or feature vectors (see the module docstring for the accepted forms).
        y : optional (N,) integer labels, -1 = unknown; used only to score ``record_``.

        Returns
        -------
        DeepClusterer
            self, fitted (``labels_``, ``cluster_centers_``, ``method_``, ... set).
        """
        self._check_method()
        data = as_data(X, y)
        self._check_params(data.n_samples)
        saved_rng = rng_state()  # the run seeds the global RNGs; give the caller theirs back
        try:
            inputs = self._embed(data) if self.features is not None else data
            if self.out is not None:
                self._fit_in(inputs, str(self.out), data)
            else:
                with tempfile.TemporaryDirectory(prefix="deepclust-") as tmp:
                    self._fit_in(inputs, tmp, data)
        finally:
            set_rng_state(saved_rng)
        return self

    # ----- pretrained embeddings (features=) -------------------------------------------------------
    def _data_option(self, key: str) -> Any:
        return ((self.config or {}).get("data") or {}).get(key)

    def _embed(self, data: ImageData, weights_hash: str | None = None) -> FeatureData:
        """``data`` (images) embedded by the ``features`` encoder through the embedding cache;
        ``weights_hash``: the hash the fit used (a changed weights file raises)."""
        from deepclust.engine.data_stage import embedded_features
        from deepclust.pretrained import create_encoder, embed

        if isinstance(data, FeatureData):
            raise DataError(
                f"features={self.features!r} embeds images, but X holds feature vectors {tuple(data.images.shape)}; "
                "pass images, or features=None to cluster the vectors"
            )
        assert self.features is not None  # _embed runs only for an estimator with features
        enc = create_encoder(self.features, self._data_option("features_size"))
        if weights_hash is not None and enc.weights_hash != weights_hash:
            raise CheckpointError(
                f"the encoder weights changed since this DeepClusterer was fitted: {self.features} now "
                f"hashes to {enc.weights_hash}, the fit used {weights_hash}; restore the file or fit again"
            )
        emb = embed(data, enc, self._data_option("cache_dir"), device=self.device, progress=bool(self.verbose))
        return embedded_features(emb, enc.spec)

    def _fit_in(self, data: ImageData, out: str, given: ImageData | None = None) -> None:
        """Train on ``data`` (the embedding with ``features``; ``given``: X as passed)."""
        cfg = self._build_config(data, out)
        trainer = Trainer(cfg, data=data)
        trainer.fit()
        result = trainer.result
        assert result is not None  # fit() returned, so its result is set
        method = result.method.eval()
        # The trainer's final evaluation already inferred the clean features of these images.
        pred = result.prediction
        assert pred is not None and result.record is not None  # one process: the final evaluation always predicts
        if pred.centers is None:  # head argmax
            labels = pred.labels
            centers = _cluster_means(pred.features, labels, result.info.n_clusters)
        else:  # clean features to the k-means centres (also when they came from IDFD's memory bank)
            labels, centers = assign_to_centers(pred.features, pred.centers)[0], pred.centers
        self.method_ = method
        self.config_ = result.config  # with the concrete backbone and stem
        self.seed_ = cfg.train.seed
        self.record_ = _plain(result.record)
        self.run_dir_ = str(result.out) if self.out is not None else None
        self._set_learned(given if given is not None else data, labels, centers)

    def _set_learned(self, data: ImageData, labels: torch.Tensor, centers: torch.Tensor) -> None:
        self.labels_ = labels.cpu().numpy().astype(np.int64)
        self.cluster_centers_ = centers.float().cpu().numpy()
        self.feature_mode_ = isinstance(data, FeatureData)
        self.input_shape_ = tuple(int(s) for s in data.images.shape[1:])
        if self.feature_mode_:
            self.n_features_in_ = int(data.images.shape[1])
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_

    # ----- inference -------------------------------------------------------------------------------
    def _infer(
        self, method: ClusteringMethod, data: ImageData, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The engine's evaluation pass: clean view, eval mode, the run's precision."""
        dev = device if device is not None else next(method.parameters()).device
        cfg = method.cfg
        amp = amp_dtype(cfg.train.amp, dev)
        return infer_images(method, data.images, cfg.eval.batch_size, dev, amp, progress=bool(self.verbose))

    def _new_data(self, X: Any) -> ImageData:
        check_is_fitted(self, "method_")
        data = as_data(X)
        if self.features is not None:  # images of any size and 1 or 3 channels: the encoder takes them
            return self._embed(data, (self.record_.get("embedding") or {}).get("weights_hash"))
        if self.feature_mode_ != isinstance(data, FeatureData):
            want = f"feature vectors (N, {self.n_features_in_})" if self.feature_mode_ else "images"
            raise DataError(f"this DeepClusterer was fitted on {want}; pass the same kind of input")
        if self.feature_mode_ and data.images.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {data.images.shape[1]} features, but DeepClusterer is expecting "
                f"{self.n_features_in_} features as input"
            )
        if not self.feature_mode_ and data.n_channels != self.input_shape_[0]:
            raise DataError(
                f"X has {data.n_channels} channel(s) but the model was fitted on {self.input_shape_[0]}; "
                "convert the images"
            )
        if not self.feature_mode_ and tuple(data.images.shape[2:]) != tuple(self.input_shape_[1:]):
            # As 'deepclust predict' does: the evaluation transform resizes to the trained size.
            size = self.method_.info.image_size
            warnings.warn(
                f"X holds {data.images.shape[2]}x{data.images.shape[3]} images but the model was fitted on "
                f"{self.input_shape_[1]}x{self.input_shape_[2]}; they are resized to {size}x{size} "
                "(bilinear, antialiased)",
                UserWarning,
                stacklevel=3,
            )
        return data

    def predict(self, X: Any) -> np.ndarray:
        """Cluster of every sample of X by the run's rule (nearest centre or head argmax).

        Parameters
        ----------
        X : new data of the kind the estimator was fitted on (images of any size, or feature
            vectors of the fitted dimension).

        Returns
        -------
        numpy.ndarray
            (N,) int64 cluster ids in ``0..n_clusters-1``.
        """
        data = self._new_data(X)
        feats, probs = self._infer(self.method_, data)
        if self.method_.prediction == "head_argmax" and probs is not None:
            return probs.argmax(1).cpu().numpy().astype(np.int64)
        return assign_to_centers(feats, torch.from_numpy(self.cluster_centers_))[0].cpu().numpy().astype(np.int64)

    def transform(self, X: Any) -> np.ndarray:
        """The learned embedding of X: the method's clean-view features.

        Parameters
        ----------
        X : new data of the kind the estimator was fitted on.

        Returns
        -------
        numpy.ndarray
            (N, D') float32, the space of ``cluster_centers_``.
        """
        data = self._new_data(X)
        return self._infer(self.method_, data)[0].cpu().numpy()

    # ----- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to one file (atomically): parameters, config, weights and
        learned attributes. Read it back with :meth:`DeepClusterer.load`.

        Parameters
        ----------
        path : the file to write (replaced if it exists).
        """
        check_is_fitted(self, "method_")
        params = self.get_params()
        if params["random_state"] is not None and not isinstance(params["random_state"], numbers.Integral):
            params["random_state"] = self.seed_  # a NumPy generator is not stored; the seed it gave is
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "params": _plain(params),
            "config": self.config_.to_dict(),
            "data_info": dataclasses.asdict(self.method_.info),
            "model": {k: v.detach().cpu() for k, v in self.method_.state_dict().items()},
            "labels": torch.from_numpy(self.labels_),
            "centers": torch.from_numpy(self.cluster_centers_),
            "input_shape": list(self.input_shape_),
            "feature_mode": bool(self.feature_mode_),
            "record": self.record_,
        }
        io.save_checkpoint(state, Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> DeepClusterer:
        """A fitted estimator from a file written by :meth:`save`.

        Parameters
        ----------
        path : a file written by :meth:`save`.
        device : where the model goes (None: the saved ``device`` parameter, "auto" by default).

        Returns
        -------
        DeepClusterer
            The fitted estimator, ready for ``predict`` and ``transform``.

        Raises
        ------
        CheckpointError
            When the file is missing or is not a saved DeepClusterer.
        """
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"no saved DeepClusterer at '{p}'; pass a file written by DeepClusterer.save(path)")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any failure to unpickle means it is not our file
            state = None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(
                f"'{p}' is not a saved DeepClusterer (a training checkpoint, another program's file or a truncated "
                "copy); write one with DeepClusterer.save(path)"
            )
        io.verify_checksum(state, p)
        state.pop(io.CHECKSUM_KEY, None)
        if int(state.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"'{p}' was written by a newer deepclust; upgrade deepclust to load it")
        est = cls(**state["params"])
        cfg = resolve_config(state["config"])
        method = create_method(cfg, DataInfo(**state["data_info"]))
        try:
            method.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(f"the weights in '{p}' do not fit the saved model; the file is damaged") from None
        method.to(resolve_device(device or est.device)).eval()
        est.method_, est.config_, est.record_, est.run_dir_ = method, cfg, state["record"], None
        est.seed_ = cfg.train.seed
        est.labels_ = state["labels"].numpy().astype(np.int64)
        est.cluster_centers_ = state["centers"].numpy()
        est.feature_mode_ = bool(state["feature_mode"])
        est.input_shape_ = tuple(state["input_shape"])
        if est.feature_mode_:
            est.n_features_in_ = int(est.input_shape_[0])
        return est


def _cluster_means(feats: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(K, D) mean of the rows of each cluster; NaN rows for empty clusters."""
    sums = torch.zeros(k, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels, feats.double())
    counts = torch.bincount(labels, minlength=k).double().unsqueeze(1)
    means = sums / counts  # 0 / 0 = NaN marks an empty cluster
    if bool((counts == 0).any()):
        empty = int((counts == 0).sum())
        log.warning("%d of %d clusters hold no training sample; their cluster_centers_ rows are NaN", empty, k)
    return means.float()

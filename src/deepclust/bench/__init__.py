"""``deepclust bench``: training throughput against a published-style loop, and k-means speed.

Throughput (``deepclust bench --method idfd --data cifar10``). Both sides train the same
method (same model, batch size, loss math and optimiser) on the same images and device:

- **deepclust**: the real :class:`~deepclust.engine.trainer.Trainer` step path (its
  ``_train_epoch``: device-resident uint8 images gathered by index, batched on-device
  augmentation, autocast per ``train.amp``, the fast paths of ``train.*`` / ``optim.fused``,
  logs accumulated on the device);
- **reference**, in the style of the published codes: a ``Dataset`` that turns every image
  into a PIL image and applies torchvision v1 transforms per image (RandomResizedCrop,
  ColorJitter, RandomGrayscale, blur / solarize where the method has them,
  RandomHorizontalFlip, ToTensor, Normalize) for each of the method's views, a
  ``DataLoader`` with one worker per core, fp32, a plain optimiser and ``loss.item()`` every
  step. The method's own augmentation modules are swapped for a feeder that hands over these
  views in the order the method asks for them, so the loss math is the method's own.

Each side: warm-up steps, then ``windows`` timed windows of ``steps`` steps, the sides taking
turns for ``rounds`` rounds (so a change of background load hits both); images/s is the median
over all windows of a side (training images, not views). Peak memory: ``max_memory_allocated`` on
CUDA; on the CPU the peak PSS (proportional set size, so pages shared by fork count once)
summed over the process and its DataLoader workers, sampled every 0.1 s during the windows.

k-means (``deepclust bench --kmeans``): :func:`deepclust.cluster.kmeans` against
scikit-learn's ``KMeans(algorithm="lloyd")`` (and faiss when installed) with the same
n_init, max_iter, tol and seed on the same float32 features; wall time (median of
``--repeats``, the libraries taking turns) and inertia, both reported and recomputed in float64.

Layout: :mod:`~deepclust.bench.records` (machine, stamp, atomic write, the run's config),
:mod:`~deepclust.bench.timing` (peak memory, timed windows), :mod:`~deepclust.bench.throughput`
(the two training loops), :mod:`~deepclust.bench.kmeans` (the k-means comparison) and
:mod:`~deepclust.bench.cli` (the subcommand).
"""

from __future__ import annotations

from deepclust.bench.cli import add_bench_parser, print_kmeans, print_throughput, run_bench
from deepclust.bench.kmeans import bench_kmeans, kmeans_features
from deepclust.bench.records import bench_config, machine_info, stamp_record, write_record
from deepclust.bench.throughput import ReferenceDataset, bench_throughput, torchvision_transform

__all__ = [
    "add_bench_parser",
    "bench_kmeans",
    "bench_throughput",
    "bench_config",
    "kmeans_features",
    "machine_info",
    "print_kmeans",
    "ReferenceDataset",
    "print_throughput",
    "run_bench",
    "stamp_record",
    "torchvision_transform",
    "write_record",
]

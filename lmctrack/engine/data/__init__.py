"""Datasets as seeded streams of training batches, so that SGD noise is a function of two seeds.

The batch of iteration t depends only on (data_order_seed, augment_seed, t): epoch e = t // ipe
and position b = t % ipe (ipe = ceil(N / batch_size), the last batch of an epoch is smaller); the
order of epoch e is torch.randperm(N) drawn from a generator seeded with derive_seed(ORDER,
data_order_seed, e); augmentation at iteration t draws from a generator seeded with
derive_seed(AUGMENT, augment_seed, t). The stream tags keep the two apart when a copy uses one
noise seed for both.
A copy rewound to step k therefore sees exactly the batches a run from step 0 saw from k on.

Modules: noise (the seeded streams), datasets (in memory and streamed from disk), loaders (where
each dataset lives and how it is read; never downloaded).
"""

from lmctrack.engine.data.datasets import (
    SPLITS,
    Dataset,
    Split,
    StreamedImageDataset,
    TensorDataset,
    dataset_fingerprint,
)
from lmctrack.engine.data.loaders import (
    LAYOUTS,
    MNIST_STATS,
    Layout,
    generate_mnist1d,
    load_dataset,
    mnist1d_file,
    read_cifar_pickle,
    read_idx,
)
from lmctrack.engine.data.noise import (
    AUGMENT,
    ORDER,
    EpochOrder,
    derive_seed,
    random_crop_flip,
    seeded_generator,
)

__all__ = [
    "AUGMENT",
    "LAYOUTS",
    "MNIST_STATS",
    "ORDER",
    "SPLITS",
    "Dataset",
    "EpochOrder",
    "Layout",
    "Split",
    "StreamedImageDataset",
    "TensorDataset",
    "dataset_fingerprint",
    "derive_seed",
    "generate_mnist1d",
    "load_dataset",
    "mnist1d_file",
    "random_crop_flip",
    "read_cifar_pickle",
    "read_idx",
    "seeded_generator",
]

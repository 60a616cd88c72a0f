"""Do features carry the labels? A ridge probe and a codebook's leaf-majority accuracy (NumPy).

These are the two measurements that say whether a set of S3D features is worth tokenizing:

- :func:`ridge_probe_accuracy`: a linear read-out (ridge regression onto one-hot labels) fitted
  on training features, scored on held-out ones: the information is *there*;
- :func:`leaf_majority_accuracy`: a hierarchical k-means codebook fitted on the training
  features, each leaf labelled with the majority label of its training features; a held-out
  feature's leaf label is right or wrong: the information survives *tokenization*, which is what
  VideoBERT sees.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = ["label_ranks", "leaf_majority_accuracy", "leaf_majority_labels", "ridge_probe_accuracy",
           "ridge_probe_ranks", "ridge_probe_scores", "ridge_probe_topk"]


def _check(features, labels, what):
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0] or not labels.size:
        raise InvalidInputError(f"{what}: features must be (N, D) and labels (N,) with N > 0, got "
                                f"{features.shape} and {labels.shape}")
    return features, labels


def ridge_probe_scores(train_features, train_labels, test_features, alpha=1.0):
    """Class scores ``(N_test, C)`` of a ridge classifier fitted on the training set, and the classes.

    Features are standardised with the training mean and standard deviation; targets are one-hot
    over the labels seen in training (``classes``, sorted; column ``j`` scores ``classes[j]``);
    ``alpha`` is the ridge penalty.
    """
    x, y = _check(train_features, train_labels, "training set")
    xt = np.asarray(test_features, dtype=np.float64)
    if xt.ndim != 2 or xt.shape[1] != x.shape[1] or not len(xt):
        raise InvalidInputError(f"test features must be (N, {x.shape[1]}) with N > 0, got {xt.shape}")
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    # Dual form: N is small next to D = 1024 here.
    gram = x1 @ x1.T + alpha * np.eye(len(x1))
    weights = x1.T @ np.linalg.solve(gram, targets)
    return np.hstack([xt, np.ones((len(xt), 1))]) @ weights, classes


def label_ranks(scores, classes, labels):
    """Per row of ``scores`` (N, C) over ``classes``: the rank of its label (0 = scored best; int array).

    Ties keep the classes' order. A label that is not among ``classes`` ranks after every class.
    """
    ranked = np.asarray(classes)[np.argsort(-np.asarray(scores), axis=1, kind="stable")]
    found = ranked == np.asarray(labels).reshape(-1)[:, None]
    return np.where(found.any(axis=1), found.argmax(axis=1), len(classes))


def ridge_probe_ranks(train_features, train_labels, test_features, test_labels, alpha=1.0):
    """Per test item: where the ridge classifier (:func:`ridge_probe_scores`) ranks its label (:func:`label_ranks`)."""
    xt, yt = _check(test_features, test_labels, "test set")
    return label_ranks(*ridge_probe_scores(train_features, train_labels, xt, alpha=alpha), yt)


def ridge_probe_topk(train_features, train_labels, test_features, test_labels, k=1, alpha=1.0):
    """Per test item: is its label among the ridge classifier's ``k`` best-scored classes? (bool array)

    A label that never occurs in training is never among them.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    return ridge_probe_ranks(train_features, train_labels, test_features, test_labels, alpha) < k


def ridge_probe_accuracy(train_features, train_labels, test_features, test_labels, alpha=1.0):
    """Accuracy on the test set of a ridge classifier fitted on the training set (:func:`ridge_probe_scores`)."""
    return float(np.mean(ridge_probe_topk(train_features, train_labels, test_features, test_labels, 1, alpha)))


def leaf_majority_labels(train_leaves, train_labels):
    """``{leaf: majority training label}`` (ties: the smallest label)."""
    leaves = np.asarray(train_leaves).reshape(-1)
    labels = np.asarray(train_labels).reshape(-1)
    if leaves.shape != labels.shape:
        raise InvalidInputError(f"train_leaves and train_labels differ in length: {leaves.shape} vs {labels.shape}")
    table = {}
    for leaf in np.unique(leaves):
        values, counts = np.unique(labels[leaves == leaf], return_counts=True)
        table[int(leaf)] = values[int(np.argmax(counts))].item()
    return table


def leaf_majority_accuracy(train_leaves, train_labels, test_leaves, test_labels):
    """Share of test items whose leaf's majority training label is their label.

    A test leaf that no training item fell into counts as wrong.
    """
    table = leaf_majority_labels(train_leaves, train_labels)
    test_leaves = np.asarray(test_leaves).reshape(-1)
    test_labels = np.asarray(test_labels).reshape(-1)
    if test_leaves.shape != test_labels.shape or not test_leaves.size:
        raise InvalidInputError(f"test_leaves and test_labels must be equal non-empty lengths, got "
                                f"{test_leaves.shape} and {test_labels.shape}")
    hits = [table.get(int(leaf), object()) == label.item() for leaf, label in zip(test_leaves, test_labels)]
    return float(np.mean(hits))

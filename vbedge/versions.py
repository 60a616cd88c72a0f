"""Installed package versions from metadata, without importing the packages (torch, TensorRT...)."""

import importlib.metadata

__all__ = ["package_version"]


def package_version(*dists):
    """The installed version of the first of ``dists`` (distribution names) that is installed;
    ``None`` when none is."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None

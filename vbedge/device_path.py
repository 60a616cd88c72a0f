"""The device-resident S3D -> tokenizer hand-off used by the pipeline with a GPU backend.

With a GPU backend (TensorRT, or torch on CUDA) S3D's features never need to leave the GPU: the
backend's ``run_to_device`` returns them as device arrays whose ``__cuda_array_interface__`` names
the stream that produces them, and the CUDA tokenizer reads them after waiting for that stream.
Only the clip (host frames in) and the leaf ids (8 bytes per clip out) cross the PCIe bus.

Both steps run in the S3D stage thread, back to back: TensorRT's output buffers are reused by its
next call, so the features must be consumed before the next batch starts (a hand-off to another
thread would race with it).
"""

from __future__ import annotations

import time

import numpy as np


def device_path_status(backend, codebook, wanted="auto"):
    """``(use, reason)``: whether the pipeline should keep S3D features on the GPU.

    ``wanted``: 'auto' (when possible), True (required: reasons become errors at the caller) or
    False (never).
    """
    if wanted is False:
        return False, "device_features=False"
    if not hasattr(backend, "run_to_device"):
        return False, f"the {getattr(backend, 'name', type(backend).__name__)} backend returns host arrays only"
    device = getattr(backend, "device", None)
    if getattr(device, "type", "cuda") != "cuda":
        return False, f"the backend runs on {device}"
    from .cuda_tokenizer import cuda_extension_status

    ok, why = cuda_extension_status()
    if not ok:
        return False, f"CUDA tokenizer unavailable: {why}"
    return True, f"S3D features stay on the GPU ({backend.name} -> CUDA tokenizer)"


def to_host(array):
    """A NumPy copy of a small device array (torch tensor, CuPy array) or a NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):  # CuPy
        return array.get()
    if hasattr(array, "cpu"):  # torch
        return array.cpu().numpy()
    raise TypeError(f"cannot copy a {type(array).__name__} to the host")


def s3d_leaves_on_device(backend, codebook, clips, mode="tree", beam=1):
    """Leaf ids (list of ints) of a batch of clips, S3D and the tokenizer both on the GPU; and the ms it took.

    The time covers S3D and tokenization together (the host waits only once, for the leaf ids).
    """
    t0 = time.monotonic()
    features = backend.run_to_device({"clip": clips})["feature"]
    leaves = to_host(codebook.tokenize(features, mode=mode, beam=beam))
    return np.asarray(leaves).astype(np.int64).tolist(), (time.monotonic() - t0) * 1000.0

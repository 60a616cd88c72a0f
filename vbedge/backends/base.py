"""The interface every inference backend implements."""

from dataclasses import dataclass

from ..errors import MissingDependencyError


class BackendUnavailableError(MissingDependencyError):
    """The requested backend cannot run here; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (NumPy name, e.g. 'float32', 'int64') and shape of a model input or output.

    Dynamic dimensions are strings (their axis name, e.g. 'batch'), static ones ints.
    """

    name: str
    dtype: str
    shape: tuple

    def to_dict(self):
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data):
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


class Backend:
    """Runs one model: named inputs in, named outputs out.

    ``run`` takes a dict of NumPy arrays (host memory) and returns a dict of NumPy arrays.
    Backends that work on the GPU also offer ``run_device`` for device buffers; see each class.
    """

    #: short identifier: 'onnxruntime', 'tensorrt', 'torch'
    name = "abstract"
    # Subclasses fill these lists of TensorSpec when they open the model.
    _inputs = ()
    _outputs = ()

    @property
    def inputs(self):
        """List of :class:`TensorSpec` of the model's inputs."""
        return list(self._inputs)

    @property
    def outputs(self):
        """List of :class:`TensorSpec` of the model's outputs."""
        return list(self._outputs)

    def run(self, inputs):
        """Run the model on ``inputs`` (dict name -> NumPy array); return dict name -> NumPy array."""
        raise NotImplementedError

    def close(self):
        """Release the backend's resources (device memory, sessions). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def validate_inputs(specs, inputs, model="model"):
    """Check a dict of host arrays against the model's input specs; return it as C-contiguous arrays.

    Raises InvalidInputError naming the input and what was expected: a missing or unexpected
    name, a wrong dtype, a wrong rank, a static dimension that differs, or NaN/Inf in a float input.
    """
    import numpy as np

    from ..errors import InvalidInputError

    if not isinstance(inputs, dict):
        raise InvalidInputError(f"{model} inputs must be a dict name -> array, got {type(inputs).__name__}")
    expected = {spec.name: spec for spec in specs}
    missing = sorted(set(expected) - set(inputs))
    unexpected = sorted(set(inputs) - set(expected))
    if missing or unexpected:
        raise InvalidInputError(
            f"{model} expects inputs {sorted(expected)}; missing {missing}, unexpected {unexpected}"
        )
    checked = {}
    for name, spec in expected.items():
        array = inputs[name]
        if not isinstance(array, np.ndarray):
            raise InvalidInputError(f"{model} input {name!r} must be a NumPy array, got {type(array).__name__}")
        if array.dtype != np.dtype(spec.dtype):
            raise InvalidInputError(f"{model} input {name!r} must be {spec.dtype}, got {array.dtype}")
        if array.ndim != len(spec.shape):
            raise InvalidInputError(
                f"{model} input {name!r} must have shape {tuple(spec.shape)} (rank {len(spec.shape)}), got {array.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"{model} input {name!r} must have shape {tuple(spec.shape)}, got {array.shape} (axis {axis})"
                )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInputError(f"{model} input {name!r} contains NaN or Inf")
        checked[name] = np.ascontiguousarray(array)
    return checked

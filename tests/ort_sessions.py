"""What an ONNX Runtime session was configured with, read back from ONNX Runtime's own record."""


def session_spins(session) -> bool:
    """Whether ``session``'s idle intra-op threads spin (``session.intra_op.allow_spinning``)."""
    try:
        entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # never set: ONNX Runtime's default, spinning
        return True
    return entry != "0"

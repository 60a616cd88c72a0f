"""Small helpers over OpenCV for tests that read back the videos they wrote."""

import cv2


def decode_frames(path):
    """Every frame of ``path`` decoded with OpenCV, in order (BGR uint8 arrays)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames

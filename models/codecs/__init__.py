"""Numpy-only decoders: one image's raw network outputs -> keypoints in input-tensor pixels."""

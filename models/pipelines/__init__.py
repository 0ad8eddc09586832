"""Serving pipelines, one file per model family: preprocess -> (session run) -> codec decode.

numpy + OpenCV only (serving path). ``base`` holds the three shapes every family builds
(``SingleStage``, ``Detector``, ``CropPose``); ``topdown`` the crop glue of the cascade;
``build`` turns a catalogue entry and its card into one of them.
"""

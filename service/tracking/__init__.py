"""Per-stream person tracking (stable IDs across frames) and keypoint smoothing (One-Euro).

Pure logic (numpy + scipy): no I/O, no clock of its own (timestamps are passed in), so each part
unit-tests alone. `session.TrackingSession` is what a stream holds.
"""

"""Camera streams: readers, scheduling into the batcher, WebSocket fan-out."""

"""Training pieces: datasets, assignment, loops (torch)."""

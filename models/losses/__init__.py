"""Training losses (torch)."""

"""Networks of the seed papers (torch; never imported on the serving path)."""

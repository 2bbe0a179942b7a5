"""Stage 2: train students from cached teacher rows (no teacher network is ever built here)."""

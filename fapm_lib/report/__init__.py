"""What people look at: overlays and panels, animated GIFs, evaluation heatmaps, results tables."""

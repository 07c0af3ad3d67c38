"""Networks assembled from minidet.nn layers."""

"""Evaluators: FID, LPIPS diversity, segmentation and face-recognition metrics, and the metric-table CLI."""

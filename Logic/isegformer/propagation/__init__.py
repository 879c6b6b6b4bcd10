"""Propagation: from a few annotated slices to a probability for every slice of the volume."""

"""Frozen-feature evaluation: extraction with a content-keyed cache, linear probe, k-NN, paired comparisons."""

"""Datasets: catalogue, readers, few-shot sampling, base/new splits, transforms, the synthetic world."""

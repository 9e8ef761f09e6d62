"""Datasets: Fashion-MNIST (the embedded default), image folders, pre-tokenized Parquet shards."""

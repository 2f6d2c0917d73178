"""Data layer: synthetic corpus, VoxCeleb preparation, manifests, trial lists, loaders, features."""

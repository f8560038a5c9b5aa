"""embench measures how useful an image encoder's embeddings are.

Trains (or loads) an encoder on a task's unlabeled split, embeds every image once into an HDF5
cache, searches small probes on the embeddings and writes a result record per run.
"""

__version__ = "0.3.0"

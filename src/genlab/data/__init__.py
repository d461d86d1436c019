from genlab.data.module import ImageDataModule, InMemoryBatches
from genlab.data.sources import load_split

__all__ = ["ImageDataModule", "InMemoryBatches", "load_split"]

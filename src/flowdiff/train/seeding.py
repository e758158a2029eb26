"""Independent random streams derived from the one ``TrainConfig.seed``."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by ``keys`` (e.g. ``("loss", rank)``), via NumPy's
    ``SeedSequence`` hash so that nearby seeds and keys give unrelated streams.

    Strings are mapped by CRC-32 (stable across processes, unlike ``hash``).
    """
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    state = np.random.SeedSequence(int(seed), spawn_key=tuple(words)).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])

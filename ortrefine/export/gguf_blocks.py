"""A GGUF file's quantized weights as integer codes, scales and offsets that MatMulNBits can hold.

Every GGUF block type ortrefine reads dequantizes (in gguf-py, which transformers uses to load the
file) as  w = scale · (q − zero_point) [+ low]  over blocks of `block_size` weights along the input
dimension, with q a small unsigned integer:

| type | bits of q | block | zero point | low          | MatMulNBits form                 |
|------|-----------|-------|------------|--------------|----------------------------------|
| Q4_0 | 4         | 32    | 8          | —            | 4-bit, exact                     |
| Q4_1 | 4         | 32    | 0          | m            | 4-bit + Σ-block correction       |
| Q4_K | 4         | 32    | 0          | −dmin·m_j    | 4-bit + Σ-block correction       |
| Q5_0 | 5 → 8     | 32    | 16 (+112)  | —            | 8-bit, exact                     |
| Q8_0 | 8         | 32    | 128        | —            | 8-bit, exact                     |
| Q6_K | 6 → 8     | 16    | 32 (+96)   | —            | 8-bit, block 16, exact           |

The arithmetic is reproduced operation for operation, so `Blocks.dequantize()` equals gguf-py's
floats bit for bit; that is what lets `match_columns` find each graph weight's rows by value,
whatever the exporter permuted (llama's q/k rows) or concatenated (fused qkv, gate_up).
8-bit codes are shifted so that MatMulNBits' default zero point 128 applies: q − 16 = (q + 112) − 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

QK_K = 256


@dataclass
class Blocks:
    """One matrix as codes per block.

    q: (rows, blocks, block_size) uint8 codes; 8-bit codes are shifted so that their zero point is
        MatMulNBits' default 128.
    scale: (rows, blocks) float32. low: (rows, blocks) float32 added after scaling, or None.
    bits: 4 or 8 (the MatMulNBits width). zero_point: the integer subtracted from q (0 for the
        types with a `low`, else 2^(bits−1)). gguf_type: the source block type's name.
    """

    q: np.ndarray
    scale: np.ndarray
    low: np.ndarray | None
    bits: int
    zero_point: int
    gguf_type: str

    @property
    def block_size(self) -> int:
        return int(self.q.shape[2])

    def dequantize(self) -> np.ndarray:
        """(rows, in_features) float32, equal to gguf-py's dequantization bit for bit."""
        shifted = self.q.astype(np.int16) - np.int16(self.zero_point)
        w = self.scale[..., None] * shifted.astype(np.float32)
        if self.low is not None:
            w = w + self.low[..., None]
        return w.reshape(self.q.shape[0], -1)

    def take(self, rows: np.ndarray) -> "Blocks":
        """These rows, in this order (a graph weight's columns gathered from one GGUF tensor)."""
        low = None if self.low is None else self.low[rows]
        return Blocks(self.q[rows], self.scale[rows], low, self.bits, self.zero_point, self.gguf_type)


def concat(parts: list[Blocks]) -> Blocks:
    """Rows of several tensors stacked (a fused projection); their layouts must agree."""
    first = parts[0]
    if any((p.bits, p.block_size, p.zero_point) != (first.bits, first.block_size, first.zero_point) for p in parts):
        raise ValueError("cannot fuse blocks of different widths: " + ", ".join(sorted({p.gguf_type for p in parts})))
    has_low = any(p.low is not None for p in parts)
    low = None
    if has_low:
        low = np.concatenate([p.low if p.low is not None else np.zeros_like(p.scale) for p in parts])
    kinds = "+".join(sorted({p.gguf_type for p in parts}))
    return Blocks(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]), low, first.bits,
                  first.zero_point, kinds)


def _f16(raw: np.ndarray) -> np.ndarray:
    """(…, 2) uint8 → (…) float32, as gguf-py reads a block's half-precision fields."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """(…, width/2) packed bytes → (…, width) codes: low nibbles first, then high (ggml order)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _q4_0(raw: np.ndarray) -> Blocks:
    d, qs = raw[..., :2], raw[..., 2:]
    return Blocks(_nibbles(qs, 32), _f16(d), None, 4, 8, "Q4_0")


def _q4_1(raw: np.ndarray) -> Blocks:
    d, m, qs = raw[..., :2], raw[..., 2:4], raw[..., 4:]
    return Blocks(_nibbles(qs, 32), _f16(d), _f16(m), 4, 0, "Q4_1")     # gguf-py: (d * q) + m


def _q5_0(raw: np.ndarray) -> Blocks:
    d, qh, qs = raw[..., :2], raw[..., 2:6], raw[..., 6:]
    high = np.ascontiguousarray(qh).view("<u4")[..., 0]
    bits = ((high[..., None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)
    q = _nibbles(qs, 32) | (bits << np.uint8(4))
    return Blocks(q + np.uint8(112), _f16(d), None, 8, 128, "Q5_0")


def _q8_0(raw: np.ndarray) -> Blocks:
    d, qs = raw[..., :2], raw[..., 2:]
    q = (np.ascontiguousarray(qs).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return Blocks(q, _f16(d), None, 8, 128, "Q8_0")


def _q4_k(raw: np.ndarray) -> Blocks:
    rows, supers = raw.shape[:2]
    flat = raw.reshape(-1, raw.shape[-1])
    d, dmin = _f16(flat[:, 0:2]), _f16(flat[:, 2:4])
    sc, mn = _k_scale_min(flat[:, 4:16])
    scale = d[:, None] * sc.astype(np.float32)             # (n, 8), as gguf-py: d * sc
    dm = dmin[:, None] * mn.astype(np.float32)              # (n, 8)
    qs = flat[:, 16:].reshape(-1, 4, 32)                   # 4 groups of 32 bytes: 2 sub-blocks each
    q = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=2).reshape(-1, 8, 32)
    # gguf-py computes d·q − dm; a − b is a + (−b) exactly in IEEE arithmetic
    return Blocks(q.reshape(rows, supers * 8, 32), scale.reshape(rows, -1), -dm.reshape(rows, -1), 4, 0, "Q4_K")


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's twelve bytes of 6-bit scales and mins → (n, 8) each (gguf-py's get_scale_min)."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _q6_k(raw: np.ndarray) -> Blocks:
    rows, supers = raw.shape[:2]
    flat = raw.reshape(-1, raw.shape[-1])
    ql, qh, sc, d = flat[:, :128], flat[:, 128:192], flat[:, 192:208], flat[:, 208:210]
    scale = _f16(d)[:, None] * np.ascontiguousarray(sc).view(np.int8).astype(np.float32)   # (n, 16)
    low4 = ql.reshape(-1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    low4 = (low4 & np.uint8(0x0F)).reshape(-1, 8, 32)
    high2 = qh.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high2 = (high2 & np.uint8(0x03)).reshape(-1, 8, 32)
    q = (low4 | (high2 << np.uint8(4))).reshape(-1, 16, 16)   # 6-bit codes, zero point 32
    return Blocks((q + np.uint8(96)).reshape(rows, supers * 16, 16), scale.reshape(rows, -1), None, 8, 128, "Q6_K")


DECODERS = {"Q4_0": (_q4_0, 32, 18), "Q4_1": (_q4_1, 32, 20), "Q5_0": (_q5_0, 32, 22),
            "Q8_0": (_q8_0, 32, 34), "Q4_K": (_q4_k, QK_K, 144), "Q6_K": (_q6_k, QK_K, 210)}


def decode(kind: str, data: np.ndarray) -> Blocks:
    """A GGUF tensor's raw bytes, (rows, row_bytes) uint8, as Blocks."""
    fn, per_block, nbytes = DECODERS[kind]
    rows = data.shape[0]
    return fn(np.ascontiguousarray(data).reshape(rows, -1, nbytes))


def read_tensors(path: Path) -> Iterator[tuple[str, Blocks]]:
    """(name, Blocks) for every 2-D tensor of a block type listed in DECODERS."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind in DECODERS and len(t.data.shape) == 2:
            yield t.name, decode(kind, t.data)

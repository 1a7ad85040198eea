"""Read a TensorFlow "V2" checkpoint (``model.ckpt.index`` + ``model.ckpt.data-*``) without TensorFlow.

OpenAI published GPT-2 in this format. It is small enough to read by hand and every piece is checksummed:

- The ``.index`` file is a TensorFlow table (LevelDB's SSTable format): data blocks of prefix-compressed
  key/value entries with restart points, an index block of block handles, and a 48-byte footer ending in the
  magic number 0xdb4775248b80fb57. Every block is followed by a compression byte and a masked CRC32C.
- Its keys are tensor names; each value is a ``BundleEntryProto`` (protobuf): dtype, shape, shard, offset, size
  and the masked CRC32C of the tensor's bytes. The empty key holds the ``BundleHeaderProto`` (shards, byte order).
- The ``.data-0000N-of-0000M`` shards hold the raw little-endian tensors at those offsets.

Layout: tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc,proto} and tensorflow/core/lib/io/{table,block,format}.
TensorFlow writes the index uncompressed; a snappy-compressed block is refused with a clear error rather than
decoded. The reader is tested against a checkpoint written by TensorFlow itself
(tests/llm/checkpoints/fixtures/tf_gpt2).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import torch

log = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 2 * 20 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)
_CRC_MASK_DELTA = 0xA282EAD8
_READ_CHUNK = 16 << 20
_HEADER_KEY = b""  # the BundleHeaderProto lives under the empty key

# TensorFlow DataType enum (types.proto) -> torch dtype, for the dtypes a weight can have.
TF_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,  # DT_FLOAT
    2: torch.float64,  # DT_DOUBLE
    3: torch.int32,  # DT_INT32
    4: torch.uint8,  # DT_UINT8
    5: torch.int16,  # DT_INT16
    6: torch.int8,  # DT_INT8
    9: torch.int64,  # DT_INT64
    10: torch.bool,  # DT_BOOL
    14: torch.bfloat16,  # DT_BFLOAT16
    19: torch.float16,  # DT_HALF
}


class TFCheckpointError(Exception):
    """A TensorFlow checkpoint is unreadable, unsupported or corrupt; the message says which file and what to do."""


class CorruptTensorError(TFCheckpointError):
    """A tensor's bytes do not match the size or CRC32C its index records: the data file is damaged."""


@dataclass(frozen=True)
class BundleEntry:
    name: str
    dtype: int  # TensorFlow DataType number
    shape: tuple[int, ...]
    shard_id: int
    offset: int  # byte offset of the tensor in its data shard
    size: int  # bytes
    crc32c: int  # masked CRC32C of the bytes, as TensorFlow stores it
    sliced: bool  # a partitioned variable (its pieces live under other keys); not supported


# ---------------------------------------------------------------------------------------------------- checksums


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow's CRC mask: a CRC stored next to the data it covers must not look like data."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    return mask_crc(google_crc32c.value(data))  # the C extension takes read-only bytes only


# ------------------------------------------------------------------------------------------ varints, protobuf


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varint/fixed fields, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:  # varint
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 1:  # fixed64
            yield number, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:  # length-delimited: bytes, string, sub-message
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("length-delimited field runs past the message")
            yield number, bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:  # fixed32
            yield number, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _parse_entry(name: str, buf: bytes) -> BundleEntry:
    """BundleEntryProto: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6 (fixed32), slices=7."""
    fields: dict[int, int | bytes] = {}
    sliced = False
    for number, value in _proto_fields(buf):
        if number == 7:
            sliced = True
        fields[number] = value
    shape: list[int] = []
    shape_proto = fields.get(2, b"")
    assert isinstance(shape_proto, bytes)
    for number, dim in _proto_fields(shape_proto):  # TensorShapeProto: dim=2 (repeated), unknown_rank=3
        if number == 2 and isinstance(dim, bytes):
            size = dict(_proto_fields(dim)).get(1, 0)  # Dim: size=1, name=2
            assert isinstance(size, int)
            shape.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64: -1 means unknown
        elif number == 3 and dim:
            raise ValueError("the tensor's shape is of unknown rank")

    def integer(number: int) -> int:
        value = fields.get(number, 0)
        assert isinstance(value, int)
        return value

    return BundleEntry(
        name=name,
        dtype=integer(1),
        shape=tuple(shape),
        shard_id=integer(3),
        offset=integer(4),
        size=integer(5),
        crc32c=integer(6),
        sliced=sliced,
    )


# ---------------------------------------------------------------------------------------------- the SSTable


def _block_handle(buf: bytes | memoryview, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int]) -> memoryview:
    """A block's contents after checking its trailer: uncompressed, and the CRC32C of contents + type byte."""
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(table):
        raise ValueError(f"block at {offset} (+{size} bytes) runs past the end of the file")
    contents = memoryview(table)[offset:end]
    kind = table[end]
    (stored_crc,) = struct.unpack_from("<I", table, end + 1)
    if masked_crc32c(table[offset : end + 1]) != stored_crc:  # the CRC covers the contents and the type byte
        raise ValueError(f"block at {offset} fails its CRC32C check")
    if kind != 0:
        raise ValueError(f"block at {offset} is compressed (type {kind}, 1 = snappy), which is not supported")
    return contents


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Every (key, value) of a block. Keys share a prefix with the previous key; restarts hold full keys."""
    if len(block) < 4:
        raise ValueError("block too small for its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts  # entries end where the restart offsets begin
    if limit < 0:
        raise ValueError("block's restart array is larger than the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise ValueError("corrupt block entry")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(data: bytes) -> dict[bytes, bytes]:
    """Every key -> value of a TensorFlow/LevelDB table held in ``data``."""
    if len(data) < FOOTER_SIZE:
        raise ValueError(f"{len(data)} bytes is too short for a table footer")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != TABLE_MAGIC:
        raise ValueError(f"no table magic number at the end (found {magic:#x})")
    footer = memoryview(data)[len(data) - FOOTER_SIZE :]
    _metaindex, pos = _block_handle(footer, 0)  # meta blocks (filters) are optional and never needed here
    index_handle, _ = _block_handle(footer, pos)
    out: dict[bytes, bytes] = {}
    for _last_key, handle_bytes in _block_entries(_read_block(data, index_handle)):
        handle, _ = _block_handle(handle_bytes, 0)
        for key, value in _block_entries(_read_block(data, handle)):
            out[key] = bytes(value)
    return out


# ------------------------------------------------------------------------------------------------- bundles


class TFCheckpoint:
    """The tensors of a checkpoint prefix (``.../model.ckpt``): `entries` by name, `read` one at a time."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = Path(prefix)
        index = self.prefix.with_name(self.prefix.name + ".index")
        try:
            table = read_table(index.read_bytes())
        except OSError as e:
            raise TFCheckpointError(f"cannot read {index}: {e.strerror or e}; download the checkpoint again") from e
        except ValueError as e:
            raise TFCheckpointError(f"{index} is not a readable TensorFlow index ({e}); download it again") from e
        self.num_shards = self._check_header(index, table.pop(_HEADER_KEY, None))
        self.entries: dict[str, BundleEntry] = {}
        for key, value in table.items():
            name = key.decode("utf-8", errors="replace")
            try:
                self.entries[name] = _parse_entry(name, value)
            except ValueError as e:
                raise TFCheckpointError(f"{index}: entry {name!r} is unreadable ({e}); download it again") from e

    @staticmethod
    def _check_header(index: Path, header: bytes | None) -> int:
        """Shard count from the BundleHeaderProto (num_shards=1, endianness=2 where 0 is little-endian)."""
        if header is None:
            raise TFCheckpointError(f"{index} has no bundle header: it is not a TensorFlow V2 checkpoint index")
        fields = dict(_proto_fields(header))
        if fields.get(2, 0) != 0:
            raise TFCheckpointError(f"{index} is a big-endian checkpoint, which is not supported")
        num_shards = fields.get(1, 1)
        assert isinstance(num_shards, int)
        return num_shards

    def shard_path(self, shard_id: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name``, its bytes checked against the size and CRC32C the index records."""
        entry = self.entries[name]
        if entry.sliced:
            raise TFCheckpointError(f"{name} is a partitioned variable, which is not supported")
        if entry.dtype not in TF_DTYPES:
            raise TFCheckpointError(f"{name} has TensorFlow dtype {entry.dtype}, which is not supported")
        dtype = TF_DTYPES[entry.dtype]
        numel = 1
        for dim in entry.shape:
            numel *= dim
        if numel < 0 or numel * dtype.itemsize != entry.size:
            raise TFCheckpointError(f"{name}: shape {entry.shape} does not match its size of {entry.size} bytes")
        shard = self.shard_path(entry.shard_id)
        buf = bytearray(entry.size)
        view, crc, got = memoryview(buf), 0, 0
        try:
            with open(shard, "rb") as f:
                f.seek(entry.offset)
                # In chunks: the CRC wants immutable bytes, and one copy of a 300 MB embedding is enough.
                while got < entry.size and (chunk := f.read(min(_READ_CHUNK, entry.size - got))):
                    crc = google_crc32c.extend(crc, chunk)
                    view[got : got + len(chunk)] = chunk
                    got += len(chunk)
        except OSError as e:
            raise TFCheckpointError(f"cannot read {shard}: {e.strerror or e}; download the checkpoint again") from e
        if got != entry.size:
            raise CorruptTensorError(f"{shard} is truncated: {name} needs bytes up to {entry.offset + entry.size}")
        if mask_crc(crc) != entry.crc32c:
            raise CorruptTensorError(f"{shard}: {name} fails its CRC32C check; the file is damaged")
        if entry.size == 0:
            return torch.empty(entry.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(entry.shape)  # little-endian, as the header promised

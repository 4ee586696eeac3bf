"""Shape profiles: which (batch, sequence) shapes an engine accepts, static or dynamic."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ShapeError, UsageError


def default_static_buckets(max_seq_length: int) -> tuple[int, ...]:
    """A quarter, a half and the full length: short texts skip most padding, and three compiled
    shapes stay cheap in memory. Never a compile per batch."""
    return tuple(sorted({max(8, max_seq_length // 4), max(8, max_seq_length // 2), max_seq_length}))


@dataclass(frozen=True)
class ShapeProfile:
    """Dynamic: any batch in [min_batch, max_batch] and sequence in [min_seq, max_seq].
    Static: exactly `batch` x each length in `static_seq_lengths` (one compiled shape per length);
    smaller inputs are padded up to the nearest compiled shape."""

    dynamic: bool
    min_batch: int
    max_batch: int
    min_seq: int
    max_seq: int
    static_seq_lengths: tuple[int, ...] = ()  # static only, ascending; the last equals max_seq

    @classmethod
    def create(cls, *, dynamic: bool, batch_size: int, max_seq_length: int, min_batch: int | None = None,
               max_batch: int | None = None, min_seq: int | None = None, max_seq: int | None = None,
               static_seq_lengths: tuple[int, ...] = ()) -> "ShapeProfile":
        """Validate user flags into a profile; reject combinations that cannot hold."""
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size} must be at least 1", "pass a positive batch size")
        if dynamic:
            if static_seq_lengths:
                raise UsageError("--seq-buckets is for static shapes", "drop it, or pass --static-shape")
            low_batch, high_batch = min_batch or 1, max_batch or max(batch_size, 64)
            low_seq, high_seq = min_seq or 1, max_seq or max_seq_length
            if not 1 <= low_batch <= high_batch:
                raise UsageError(f"batch range [{low_batch}, {high_batch}] is empty",
                                 "pass --min-batch no larger than --max-batch")
            if not 1 <= low_seq <= high_seq:
                raise UsageError(f"sequence range [{low_seq}, {high_seq}] is empty",
                                 "pass --min-seq no larger than --max-seq")
            if high_seq > max_seq_length:
                raise UsageError(f"--max-seq {high_seq} exceeds the export's max_seq_length {max_seq_length}",
                                 f"re-export with --max-seq-length {high_seq} or lower --max-seq")
            return cls(True, low_batch, high_batch, low_seq, high_seq)
        if any(value is not None for value in (min_batch, max_batch, min_seq, max_seq)):
            raise UsageError("--min-batch/--max-batch/--min-seq/--max-seq describe dynamic shapes",
                             "pass --dynamic-shape, or use --batch-size and --max-seq-length for a static shape")
        lengths = tuple(sorted(set(static_seq_lengths))) or default_static_buckets(max_seq_length)
        if lengths[0] < 1 or lengths[-1] > max_seq_length:
            raise UsageError(f"--seq-buckets {lengths} must lie in [1, {max_seq_length}]",
                             "give lengths no longer than --max-seq-length")
        if lengths[-1] != max_seq_length:
            lengths = lengths + (max_seq_length,)
        return cls(False, batch_size, batch_size, lengths[0], max_seq_length, lengths)

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeProfile":
        return cls(**{**data, "static_seq_lengths": tuple(data.get("static_seq_lengths", ()))})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.dynamic:
            return f"dynamic batch {self.min_batch}-{self.max_batch}, sequence {self.min_seq}-{self.max_seq}"
        lengths = ",".join(str(length) for length in self.static_seq_lengths)
        return f"static batch {self.max_batch}, sequence {lengths}"

    def fit(self, batch: int, seq: int) -> tuple[int, int]:
        """The shape the engine will run for an input of (batch, seq), padded up where the engine needs a
        larger one; ShapeError if none fits."""
        if batch > self.max_batch or seq > self.max_seq:
            fix = ("split the input into smaller batches, or rebuild with a larger "
                   + ("--max-batch/--max-seq" if self.dynamic else "--batch-size/--max-seq-length, or --dynamic-shape"))
            raise ShapeError(f"input shape ({batch}, {seq}) is outside the bundle's {self.describe()}", fix)
        if batch < 1 or seq < 1:
            raise ShapeError(f"input shape ({batch}, {seq}) is empty", "pass at least one token of one text")
        if self.dynamic:  # below the minimum: padded up (filler rows, masked columns)
            return max(batch, self.min_batch), max(seq, self.min_seq)
        return self.max_batch, next(length for length in self.static_seq_lengths if length >= seq)

    def activation_bytes(self, hidden_size: int, attention_heads: int) -> int:
        """About how much memory a static engine's largest shape needs while it runs (float32
        activations of one layer: hidden states, the 4x feed-forward, and attention scores).
        Zero for dynamic profiles, which allocate for the inputs they get."""
        if self.dynamic:
            return 0
        per_row = 4 * (16 * self.max_seq * hidden_size + 2 * attention_heads * self.max_seq ** 2)
        return self.max_batch * per_row

    def bucket_lengths(self) -> tuple[int, ...] | None:
        """Lengths batches must be padded to (static), or None when any length fits (dynamic)."""
        return None if self.dynamic else self.static_seq_lengths

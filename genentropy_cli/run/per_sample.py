"""Per-sample output (``--per-sample FILE``): one row per sample, in sample order.

Columns: ``index`` (sample i; its latent is LatentStream(spec, seed) row i), ``neg_log_density``
(-log p(z_i)), ``h`` (the entropy term h_i at each scale, in the order of ``settings.scales``),
``collapsed`` (per scale, the number of directions with lambda < s^2), and with
``--save-latents`` ``latent`` (z_i, flat, float64). Formats by suffix:

* ``.npy``: a structured array (fields as above; ``h``/``collapsed``/``latent`` are sub-arrays),
  ``np.load(FILE)`` reads it without pickles;
* ``.csv``: a header ``index,neg_log_density,h[s=0.1],...,collapsed[s=0.1],...,z0,...``;
* ``.jsonl``: one JSON object per line with those keys (lists for the per-scale columns); strict
  JSON, a non-finite number (NaN, inf) written as ``null``.

Rows are appended as they reach the ledger's frontier; a checkpoint records how many bytes
belong to the rows it covers, and a resumed run cuts the file back to that before appending.
``.npy`` rows go to a ``FILE.rows`` side file that becomes the ``.npy`` at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from genentropy_cli.defaults import PER_SAMPLE_FORMATS
from genentropy_cli.envelope import strict
from genentropy_cli.errors import InputError
from genentropy_cli.run.rows import PairedRows, RecordField, SampleRows

FORMATS = PER_SAMPLE_FORMATS
"""The suffixes ``--per-sample`` writes (``defaults.PER_SAMPLE_FORMATS``: help texts read it there)."""


def per_sample_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"--per-sample takes a file ending in {', '.join(FORMATS)}, got {str(path)!r}")
    return suffix


def output_files(path: str | Path | None) -> dict[str, Path | None]:
    """The files ``--per-sample FILE`` writes, by label: FILE, and for ``.npy`` the ``FILE.rows``
    side file its rows go to first (for the checks made before a run)."""
    if path is None:
        return {"--per-sample": None}
    files: dict[str, Path | None] = {"--per-sample": Path(path)}
    if per_sample_format(path) == ".npy":
        files["--per-sample's rows file"] = rows_file(path)
    return files


def rows_file(path: str | Path) -> Path:
    """``FILE.rows``: where a ``.npy`` per-sample file's rows are appended until the run ends."""
    return Path(path).with_name(Path(path).name + ".rows")


def record_dtype(fields: Sequence[RecordField], num_scales: int, latent_dim: int | None) -> np.dtype:
    """The structured row: ``index``, then ``fields`` (per-scale ones as sub-arrays), then the latent."""
    layout = [("index", "<i8")]
    layout += [(name, dtype, (num_scales,)) if per_scale else (name, dtype) for name, dtype, per_scale in fields]
    if latent_dim is not None:
        layout.append(("latent", "<f8", (latent_dim,)))
    return np.dtype(layout)


class PerSampleWriter:
    """Appends rows to FILE (or its ``.rows`` side file for .npy); see the module."""

    def __init__(self, path: str | Path, scales: Sequence[float], latent_dim: int, save_latents: bool,
                 fields: Sequence[RecordField] = SampleRows.empty(0).record_fields()):
        self.path = Path(path)
        self.format = per_sample_format(path)
        self.scales = tuple(scales)
        self.fields = list(fields)
        self.latent_dim = latent_dim if save_latents else None
        self.dtype = record_dtype(self.fields, len(self.scales), self.latent_dim)
        self.stream_path = rows_file(self.path) if self.format == ".npy" else self.path
        self.handle = None

    def open(self, resume_offset: int | None = None) -> None:
        """Start the file, or cut it back to ``resume_offset`` bytes and append from there."""
        if resume_offset is None:
            self.handle = open(self.stream_path, "wb")
            if self.format == ".csv":
                self.handle.write((",".join(self._csv_header()) + "\n").encode())
            return
        size = self.stream_path.stat().st_size if self.stream_path.exists() else -1
        if size < resume_offset:
            raise InputError(
                f"the per-sample file {self.stream_path} is shorter than the checkpoint records "
                f"({max(size, 0)} < {resume_offset} bytes); delete the checkpoint to start over"
            )
        self.handle = open(self.stream_path, "r+b")
        self.handle.truncate(resume_offset)
        self.handle.seek(resume_offset)

    def _csv_header(self) -> list[str]:
        header = ["index"]
        for name, _, per_scale in self.fields:
            header += [f"{name}[s={scale:g}]" for scale in self.scales] if per_scale else [name]
        if self.latent_dim is not None:
            header += [f"z{position}" for position in range(self.latent_dim)]
        return header

    def write(self, first_index: int, rows: SampleRows | PairedRows, latents: np.ndarray | None) -> None:
        records = np.zeros(len(rows), dtype=self.dtype)
        records["index"] = np.arange(first_index, first_index + len(rows))
        for name, values in rows.record_values().items():
            records[name] = values
        if self.latent_dim is not None:
            records["latent"] = latents
        if self.format == ".npy":
            self.handle.write(records.tobytes())
        elif self.format == ".csv":
            self.handle.write("".join(self._csv_line(record) for record in records).encode())
        else:
            self.handle.write("".join(self._json_line(record) for record in records).encode())

    @staticmethod
    def _text(value, dtype: str) -> str:
        return str(int(value)) if dtype == "<i8" else repr(float(value))

    def _csv_line(self, record) -> str:
        values = [str(int(record["index"]))]
        for name, dtype, per_scale in self.fields:
            values += [self._text(value, dtype) for value in record[name]] if per_scale else [self._text(record[name], dtype)]
        if self.latent_dim is not None:
            values += [repr(float(value)) for value in record["latent"]]
        return ",".join(values) + "\n"

    def _json_line(self, record) -> str:
        def plain(value, dtype: str):
            return int(value) if dtype == "<i8" else float(value)

        row = {"index": int(record["index"])}
        for name, dtype, per_scale in self.fields:
            row[name] = [plain(value, dtype) for value in record[name]] if per_scale else plain(record[name], dtype)
        if self.latent_dim is not None:
            row["latent"] = [float(value) for value in record["latent"]]
        return json.dumps(strict(row), allow_nan=False) + "\n"  # strict JSON: a non-finite number is null

    def sync(self) -> int:
        """Flush to disk; the byte offset a checkpoint records."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def finish(self, keep_rows_file: bool) -> None:
        """Close; for .npy, write the array atomically from the side file (kept while the run
        can still be resumed)."""
        self.sync()
        self.handle.close()
        self.handle = None
        if self.format != ".npy":
            return
        records = np.fromfile(self.stream_path, dtype=self.dtype)
        temporary = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                np.save(handle, records)
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if not keep_rows_file:
            self.stream_path.unlink()

    def close(self, discard: bool = False) -> None:
        """Close the file; ``discard``: after a failed write, whose buffered rest cannot be written either."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.close()
            except OSError:
                if not discard:
                    raise

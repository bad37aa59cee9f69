"""Quantise an ONNX model to int8 with ``onnxruntime.quantization`` and report what it cost and what it saved.

:func:`quantize_onnx` writes the quantised model (write temp, fsync, rename) and returns a
:class:`QuantizeReport`: the size ratio, the single-row and batch latency ratios measured on this machine in the
same run, and the accuracy change on held-out data (max/mean absolute output difference, and the ROC AUC before and
after when the data carries labels).

Data files are ``.npz`` archives. An array is fed to the model input of the same name; a model with a single
input also accepts an archive whose only non-label array has another name (``features``, ``x``, ``arr_0``...).
Labels, when present, are the array named ``labels`` (or ``label`` / ``y``): one 0/1 value per row.

``onnx`` (the ``quantize`` extra) is imported only when a model is quantised.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_runtime._errors import ModelInputError, QuantizationError

from ._fsutil import fsync_dir

#: What ``calibration`` and ``eval_data`` accept: an ``.npz`` path, one array (single-input models), or a
#: mapping of input name (and optionally ``labels``) to arrays.
DataSource = str | os.PathLike | np.ndarray | Mapping[str, np.ndarray]

LABEL_KEYS: tuple[str, ...] = ("labels", "label", "y")
MODES: tuple[str, ...] = ("dynamic", "static")
_INSTALL_HINT = "pip install 'edge-runtime[quantize]'"
_CALIBRATION_BATCH = 64
_LATENCY_RUNS = 200
_RANDOM_EVAL_ROWS = 256


@dataclass(frozen=True)
class QuantizeReport:
    """What quantising one model changed. Ratios are quantised / original (below 1 means smaller or faster).

    ``eval_source`` says which rows the accuracy figures come from: ``"eval"`` (the held-out data given),
    ``"calibration"`` (no eval data: the calibration rows) or ``"random"`` (neither: standard-normal inputs, so
    only the output difference is meaningful). The AUC fields are None unless the eval data has labels and the
    model's first output is a single score per row.
    """

    mode: str
    input_path: str
    output_path: str
    input_bytes: int
    output_bytes: int
    size_ratio: float
    input_latency_us: float
    output_latency_us: float
    latency_ratio: float
    input_batch_latency_us: float
    output_batch_latency_us: float
    batch_latency_ratio: float
    eval_source: str
    eval_rows: int
    max_abs_diff: float
    mean_abs_diff: float
    auc_before: float | None = None
    auc_after: float | None = None
    auc_delta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain JSON-ready dict."""
        return asdict(self)

    def table_rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, original, quantised, change) rows for printing as a table."""

        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        rows = [
            ("size (bytes)", str(self.input_bytes), str(self.output_bytes), f"x{self.size_ratio:.3f}"),
            (
                "latency, 1 row (us)",
                f"{self.input_latency_us:.1f}",
                f"{self.output_latency_us:.1f}",
                f"x{self.latency_ratio:.3f}",
            ),
            (
                f"latency, {self.eval_rows} rows (us)",
                f"{self.input_batch_latency_us:.1f}",
                f"{self.output_batch_latency_us:.1f}",
                f"x{self.batch_latency_ratio:.3f}",
            ),
            ("max |output diff|", "0", fmt(self.max_abs_diff, ".6f"), f"on {self.eval_source} data"),
            ("mean |output diff|", "0", fmt(self.mean_abs_diff, ".6f"), f"on {self.eval_source} data"),
        ]
        if self.auc_before is not None:
            rows.append(
                ("ROC AUC", fmt(self.auc_before, ".4f"), fmt(self.auc_after, ".4f"), fmt(self.auc_delta, "+.4f"))
            )
        return rows


def quantize_onnx(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    mode: Literal["dynamic", "static"] = "dynamic",
    calibration: DataSource | None = None,
    eval_data: DataSource | None = None,
    per_channel: bool = False,
) -> QuantizeReport:
    """Quantise the ONNX model at ``in_path`` to int8 and write it to ``out_path``.

    ``mode="dynamic"`` quantises weights ahead of time and activations per call (no data needed);
    ``mode="static"`` also fixes activation ranges from ``calibration`` rows (QDQ format) and requires them.
    ``eval_data`` (held-out rows, optionally with labels) is what the accuracy change is measured on.

    Raises :class:`~edge_runtime.QuantizationError` for a missing or unreadable model, an unknown mode, static mode
    without calibration, or onnx not installed; :class:`~edge_runtime.ModelInputError` when calibration or eval
    data does not fit the model's inputs (missing input, wrong rank, shape or dtype, ragged rows or labels).
    """
    src = Path(in_path)
    dst = Path(out_path)
    if mode not in MODES:
        raise QuantizationError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if not src.is_file():
        raise QuantizationError("no such model file (expected an existing .onnx file)", path=src)
    if mode == "static" and calibration is None:
        raise QuantizationError(
            "static quantisation needs calibration data: pass an .npz of representative input rows "
            "(--calibration data.npz), or use mode 'dynamic'",
            path=src,
        )
    if src.resolve() == dst.resolve():
        raise QuantizationError("the output path must differ from the input path", path=dst)
    if not dst.parent.is_dir():
        raise QuantizationError("the output directory does not exist", path=dst.parent)

    qz = _import_quantization()
    ort = _import_ort()
    original = _open_session(ort, src)
    specs = _input_specs(original)

    calib_feeds = calib_labels = None
    if calibration is not None:
        calib_feeds, calib_labels = _load_feeds(calibration, specs, what="calibration")
    if eval_data is not None:
        eval_feeds, labels = _load_feeds(eval_data, specs, what="eval data")
        source = "eval"
    elif calib_feeds is not None:
        eval_feeds, labels, source = calib_feeds, calib_labels, "calibration"
    else:
        eval_feeds, labels, source = _random_feeds(specs), None, "random"

    _write_quantized(qz, src, dst, mode=mode, calib_feeds=calib_feeds, per_channel=per_channel)
    quantized = _open_session(ort, dst)

    before = _first_output(original, eval_feeds)
    after = _first_output(quantized, eval_feeds)
    diff = np.abs(before.astype(np.float64) - after.astype(np.float64))
    one_row = {name: arr[:1] for name, arr in eval_feeds.items()}
    lat_in, lat_out = _paired_latency(original, quantized, one_row, _LATENCY_RUNS)
    batch_runs = max(5, min(_LATENCY_RUNS, 20_000 // max(1, _rows(eval_feeds))))
    blat_in, blat_out = _paired_latency(original, quantized, eval_feeds, batch_runs)

    auc_before = auc_after = auc_delta = None
    if labels is not None and _is_score(before):
        auc_before = roc_auc(labels, before.ravel())
        auc_after = roc_auc(labels, after.ravel())
        auc_delta = auc_after - auc_before

    in_bytes, out_bytes = src.stat().st_size, dst.stat().st_size
    return QuantizeReport(
        mode=mode,
        input_path=str(src),
        output_path=str(dst),
        input_bytes=in_bytes,
        output_bytes=out_bytes,
        size_ratio=out_bytes / in_bytes,
        input_latency_us=lat_in,
        output_latency_us=lat_out,
        latency_ratio=lat_out / lat_in,
        input_batch_latency_us=blat_in,
        output_batch_latency_us=blat_out,
        batch_latency_ratio=blat_out / blat_in,
        eval_source=source,
        eval_rows=_rows(eval_feeds),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        auc_before=auc_before,
        auc_after=auc_after,
        auc_delta=auc_delta,
    )


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` against 0/1 ``labels`` (the Mann-Whitney statistic; ties count one half).

    Raises :class:`ValueError` when the lengths differ or only one class is present.
    """
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    positive = y.astype(bool)
    n_pos = int(positive.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average ranks over runs of tied scores, so ties count one half.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array in the ``.npz`` file at ``path``; a missing or unreadable file raises QuantizationError."""
    p = Path(path)
    if not p.is_file():
        raise QuantizationError("no such data file (expected an .npz archive of arrays)", path=p)
    try:
        with np.load(p, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"cannot read as an .npz archive: {exc}", path=p) from exc


# --- internals -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _InputSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _import_quantization() -> Any:
    try:
        # onnxruntime.quantization needs onnx: import it first so its absence gets the install hint.
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as exc:
        raise QuantizationError(f"onnx is not installed ({exc}); install it with {_INSTALL_HINT}") from exc
    return quantization


def _import_ort() -> Any:
    import onnxruntime

    return onnxruntime


def _open_session(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    # One thread each: the latency ratio compares the models, not how well they parallelise on a busy machine.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise QuantizationError(f"onnxruntime cannot load this model: {exc}", path=path) from exc


def _input_specs(session: Any) -> list[_InputSpec]:
    specs = []
    for node in session.get_inputs():
        dtype = _ORT_DTYPES.get(node.type)
        if dtype is None:
            raise QuantizationError(f"input {node.name!r} has unsupported type {node.type}")
        shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        specs.append(_InputSpec(node.name, shape, np.dtype(dtype)))
    return specs


def _load_feeds(
    source: DataSource, specs: list[_InputSpec], *, what: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Map ``source`` onto the model's inputs, checking shapes and dtypes; return (feeds, labels or None)."""
    if isinstance(source, (str, os.PathLike)):
        arrays = load_npz(source)
    elif isinstance(source, np.ndarray):
        arrays = {specs[0].name if len(specs) == 1 else "": source}
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        raise QuantizationError(f"{what} must be an .npz path, an array or a mapping of arrays")
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key) if label_key else None
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            feeds[spec.name] = arrays[spec.name]
        elif len(specs) == 1 and len(arrays) == 1:
            feeds[spec.name] = next(iter(arrays.values()))
        else:
            raise ModelInputError(
                f"{what} has no array for model input {spec.name!r} (found {sorted(arrays) or 'none'}; "
                f"expected arrays named {[s.name for s in specs]})",
                input_name=spec.name,
            )
        feeds[spec.name] = _coerce(feeds[spec.name], spec, what)
    rows = {a.shape[0] for a in feeds.values()}
    if len(rows) != 1:
        raise ModelInputError(f"{what}: inputs have different numbers of rows {sorted(rows)}")
    n = rows.pop()
    if n == 0:
        raise ModelInputError(f"{what} has no rows")
    if labels is not None:
        labels = np.asarray(labels).ravel()
        if labels.shape[0] != n:
            raise ModelInputError(f"{what}: {labels.shape[0]} labels for {n} rows")
        if not np.isin(labels, (0, 1)).all():
            raise ModelInputError(f"{what}: labels must be 0 or 1")
    return feeds, labels


def _coerce(array: np.ndarray, spec: _InputSpec, what: str) -> np.ndarray:
    arr = np.asarray(array)
    expected = "[" + ", ".join("N" if d is None else str(d) for d in spec.shape) + "]"
    if arr.ndim != len(spec.shape):
        raise ModelInputError(
            f"{what} for input {spec.name!r} has shape {list(arr.shape)}; expected {expected}",
            input_name=spec.name,
        )
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if axis > 0 and want is not None and got != want:
            raise ModelInputError(
                f"{what} for input {spec.name!r} has shape {list(arr.shape)}; expected {expected}",
                input_name=spec.name,
            )
    if arr.dtype == spec.dtype:
        return np.ascontiguousarray(arr)
    same_kind = (arr.dtype.kind == "f" and spec.dtype.kind == "f") or (
        arr.dtype.kind in "iu" and spec.dtype.kind in "iu"
    )
    if not same_kind:
        raise ModelInputError(
            f"{what} for input {spec.name!r} has dtype {arr.dtype}; expected {spec.dtype}", input_name=spec.name
        )
    return np.ascontiguousarray(arr.astype(spec.dtype))


def _random_feeds(specs: list[_InputSpec]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = tuple(_RANDOM_EVAL_ROWS if d is None else d for d in spec.shape)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


class _Batches:
    """Feeds calibration rows to onnxruntime's calibrator in fixed-size batches (a CalibrationDataReader)."""

    def __init__(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        n = _rows(self._feeds)
        for start in range(0, n, _CALIBRATION_BATCH):
            yield {k: v[start : start + _CALIBRATION_BATCH] for k, v in self._feeds.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def _write_quantized(
    qz: Any,
    src: Path,
    dst: Path,
    *,
    mode: str,
    calib_feeds: Mapping[str, np.ndarray] | None,
    per_channel: bool,
) -> None:
    quiet = _DropPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        _quantize_to(qz, src, dst, mode=mode, calib_feeds=calib_feeds, per_channel=per_channel)
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime logs "consider pre-processing before quantization" on the root logger for every model; for
    these MatMul/Gemm graphs shape inference adds nothing, so the advice is noise on the CLI."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def _quantize_to(
    qz: Any,
    src: Path,
    dst: Path,
    *,
    mode: str,
    calib_feeds: Mapping[str, np.ndarray] | None,
    per_channel: bool,
) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            if mode == "dynamic":
                qz.quantize_dynamic(src, tmp, per_channel=per_channel, weight_type=qz.QuantType.QInt8)
            else:
                assert calib_feeds is not None
                # onnxruntime duck-types the reader (get_next), so no import-time subclass of its ABC is needed.
                qz.quantize_static(
                    src,
                    tmp,
                    _Batches(calib_feeds),
                    quant_format=qz.QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=qz.QuantType.QInt8,
                    weight_type=qz.QuantType.QInt8,
                )
        except (ModelInputError, QuantizationError):
            raise
        except Exception as exc:  # onnx / onnxruntime raise many unrelated classes
            raise QuantizationError(f"onnxruntime could not quantise this model ({mode}): {exc}", path=src) from exc
        # mkstemp creates the file 0600; give the model the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _first_output(session: Any, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    try:
        out: np.ndarray = session.run(None, dict(feeds))[0]
    except Exception as exc:
        raise ModelInputError(f"the model rejected the data: {exc}") from exc
    return out


def _is_score(output: np.ndarray) -> bool:
    return output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)


def _paired_latency(a: Any, b: Any, feeds: Mapping[str, np.ndarray], runs: int) -> tuple[float, float]:
    """Median microseconds per ``run`` of each session, interleaved so machine noise hits both alike."""
    feeds = dict(feeds)
    for _ in range(10):
        a.run(None, feeds)
        b.run(None, feeds)
    ta: list[int] = []
    tb: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        t0 = clock()
        a.run(None, feeds)
        t1 = clock()
        b.run(None, feeds)
        t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) / 1000.0, statistics.median(tb) / 1000.0

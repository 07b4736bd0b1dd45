"""Lenient FLAC decoding through the libFLAC 1.3.x library bundled with pyFLAC.

libFLAC >= 1.4 (the one inside current soundfile wheels) rejects FLAC frames
whose samples do not fit the declared bit depth; libFLAC 1.3.x decodes them.
The reference results were produced with libFLAC 1.3.x, so files that
soundfile refuses are decoded here, with ctypes, straight from the stream
decoder API. pyFLAC's own Python decoder classes are not used: they cast the
samples to int16, which wraps the out-of-range values.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import platform
import sys
from pathlib import Path

import numpy as np

INSTALL_HINT = "install it with `pip install pyFLAC==2.1.0` (it bundles libFLAC 1.3.4)"

# Enum values from FLAC/stream_decoder.h (libFLAC 1.3.x).
_INIT_STATUS_OK = 0
_STATE_END_OF_STREAM = 4
_WRITE_CONTINUE = 0
_WRITE_ABORT = 1
_METADATA_TYPE_STREAMINFO = 0
_MAX_PREALLOCATED = 1 << 26  # samples per channel
_ERROR_STATUS_NAMES = ("LOST_SYNC", "BAD_HEADER", "FRAME_CRC_MISMATCH", "UNPARSEABLE_STREAM")
_INIT_STATUS_NAMES = (
    "OK", "UNSUPPORTED_CONTAINER", "INVALID_CALLBACKS", "MEMORY_ALLOCATION_ERROR",
    "ERROR_OPENING_FILE", "ALREADY_INITIALIZED",
)


class FlacFallbackUnavailable(RuntimeError):
    """pyFLAC's libFLAC 1.3.x shared library cannot be found or loaded."""


class FlacDecodeError(ValueError):
    """libFLAC reported an error while decoding a file; `reason` is the message without the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _FrameHeaderStart(ctypes.Structure):
    # Only the leading fields of FLAC__FrameHeader; the frame is read through a pointer.
    _fields_ = [
        ("blocksize", ctypes.c_uint32),
        ("sample_rate", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("channel_assignment", ctypes.c_int),
        ("bits_per_sample", ctypes.c_uint32),
    ]


class _StreamInfo(ctypes.Structure):
    _fields_ = [
        ("min_blocksize", ctypes.c_uint32),
        ("max_blocksize", ctypes.c_uint32),
        ("min_framesize", ctypes.c_uint32),
        ("max_framesize", ctypes.c_uint32),
        ("sample_rate", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("bits_per_sample", ctypes.c_uint32),
        ("total_samples", ctypes.c_uint64),
        ("md5sum", ctypes.c_ubyte * 16),
    ]


class _StreamMetadataStart(ctypes.Structure):
    # FLAC__StreamMetadata with its data union reduced to the STREAMINFO member
    # (the union is 8-byte aligned like the uint64 inside StreamInfo).
    _fields_ = [
        ("type", ctypes.c_int),
        ("is_last", ctypes.c_int),
        ("length", ctypes.c_uint32),
        ("stream_info", _StreamInfo),
    ]


_WriteCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_FrameHeaderStart),
    ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)), ctypes.c_void_p,
)
_MetadataCallback = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(_StreamMetadataStart), ctypes.c_void_p,
)
_ErrorCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


def _platform_library_relpath() -> str:
    """Path of pyFLAC 2.1.0's libFLAC for this interpreter, relative to the package."""
    system = platform.system()
    machine = platform.machine().lower()
    if system == "Linux":
        if machine in ("x86_64", "amd64"):
            return "libraries/linux-x86_64/libFLAC-8.3.0.so"
        if machine in ("aarch64", "arm64"):
            return "libraries/linux-arm64/libFLAC-8.3.0.so"
        if machine.startswith("armv7"):
            return "libraries/raspbian-armv7a/libFLAC-8.3.0.so"
        if machine.startswith("armv6"):
            return "libraries/raspbian-armv6z/libFLAC-8.3.0.so"
    elif system == "Darwin":
        if machine == "arm64":
            return "libraries/darwin-arm64/libFLAC.8.dylib"
        if machine == "x86_64":
            return "libraries/darwin-x86_64/libFLAC.8.dylib"
    elif system == "Windows":
        folder = "windows-x86_64" if sys.maxsize > 2**32 else "windows-i686"
        return f"libraries/{folder}/libFLAC-8.dll"
    raise FlacFallbackUnavailable(
        f"pyFLAC ships no libFLAC for {system}/{machine}; the lenient FLAC fallback is unavailable"
    )


@functools.lru_cache(maxsize=1)
def _load_library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("pyflac")
    if spec is None or not spec.submodule_search_locations:
        raise FlacFallbackUnavailable(f"pyFLAC is not installed; {INSTALL_HINT}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    library_path = package_dir / _platform_library_relpath()
    if not library_path.is_file():
        raise FlacFallbackUnavailable(f"libFLAC not found at {library_path}; {INSTALL_HINT}")
    try:
        library = ctypes.CDLL(str(library_path))
    except OSError as error:
        raise FlacFallbackUnavailable(f"cannot load {library_path}: {error}; {INSTALL_HINT}") from error

    version = ctypes.c_char_p.in_dll(library, "FLAC__VERSION_STRING").value or b""
    if not version.startswith(b"1.3."):
        # Only 1.3.x accepts the out-of-range frames and matches the reference decode.
        raise FlacFallbackUnavailable(
            f"{library_path} is libFLAC {version.decode(errors='replace')}, need 1.3.x; {INSTALL_HINT}"
        )

    library.FLAC__stream_decoder_new.restype = ctypes.c_void_p
    library.FLAC__stream_decoder_new.argtypes = []
    library.FLAC__stream_decoder_delete.restype = None
    library.FLAC__stream_decoder_delete.argtypes = [ctypes.c_void_p]
    library.FLAC__stream_decoder_set_md5_checking.restype = ctypes.c_int
    library.FLAC__stream_decoder_set_md5_checking.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.FLAC__stream_decoder_init_file.restype = ctypes.c_int
    library.FLAC__stream_decoder_init_file.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, _WriteCallback, _MetadataCallback, _ErrorCallback,
        ctypes.c_void_p,
    ]
    library.FLAC__stream_decoder_process_until_end_of_stream.restype = ctypes.c_int
    library.FLAC__stream_decoder_process_until_end_of_stream.argtypes = [ctypes.c_void_p]
    library.FLAC__stream_decoder_get_state.restype = ctypes.c_int
    library.FLAC__stream_decoder_get_state.argtypes = [ctypes.c_void_p]
    library.FLAC__stream_decoder_get_resolved_state_string.restype = ctypes.c_char_p
    library.FLAC__stream_decoder_get_resolved_state_string.argtypes = [ctypes.c_void_p]
    library.FLAC__stream_decoder_finish.restype = ctypes.c_int
    library.FLAC__stream_decoder_finish.argtypes = [ctypes.c_void_p]
    return library


def fallback_available() -> bool:
    """True when pyFLAC's libFLAC 1.3.x can be loaded (see `require_fallback` for why not)."""
    try:
        _load_library()
    except FlacFallbackUnavailable:
        return False
    return True


def require_fallback() -> None:
    """Raise FlacFallbackUnavailable, saying what to install, if the decoder cannot be used."""
    _load_library()


def libflac_version() -> str:
    library = _load_library()
    return ctypes.c_char_p.in_dll(library, "FLAC__VERSION_STRING").value.decode()


def _encode_path(path: str) -> bytes:
    if os.name != "nt":
        return os.fsencode(path)
    # libFLAC 1.3 on Windows opens files with the ANSI fopen (the "mbcs" code page).
    try:
        return path.encode("mbcs")
    except UnicodeEncodeError:
        raise FlacDecodeError(path, "file name not representable in the ANSI code page") from None


class _SampleSink:
    """Collects decoded frames into a growing int32 [n, channels] buffer."""

    def __init__(self) -> None:
        self.samples = np.empty((0, 1), dtype=np.int32)
        self.count = 0
        self.channels = 0
        self.sample_rate = 0
        self.bits_per_sample = 0
        self.total_samples = 0  # from STREAMINFO; 0 = unknown
        self.errors: list[str] = []
        self.failure: BaseException | None = None

    def on_streaminfo(self, info: _StreamInfo) -> None:
        self.channels = int(info.channels)
        self.sample_rate = int(info.sample_rate)
        self.bits_per_sample = int(info.bits_per_sample)
        self.total_samples = int(info.total_samples)
        # A corrupt header can declare up to 2**36 samples: cap the guess, grow if needed.
        self.samples = np.empty((min(self.total_samples, _MAX_PREALLOCATED), self.channels), dtype=np.int32)

    def on_frame(self, header: _FrameHeaderStart, channel_buffers) -> None:
        blocksize, channels = int(header.blocksize), int(header.channels)
        if self.channels == 0:  # stream without STREAMINFO
            self.channels = channels
            self.samples = np.empty((0, channels), dtype=np.int32)
        if channels != self.channels:
            raise ValueError(f"frame with {channels} channels in a {self.channels}-channel stream")
        if self.sample_rate == 0:
            self.sample_rate = int(header.sample_rate)
            self.bits_per_sample = int(header.bits_per_sample)
        end = self.count + blocksize
        if end > self.samples.shape[0]:
            grown = np.empty((max(end, 2 * self.samples.shape[0]), channels), dtype=np.int32)
            grown[: self.count] = self.samples[: self.count]
            self.samples = grown
        for channel in range(channels):
            pointer = channel_buffers[channel]
            self.samples[self.count:end, channel] = np.ctypeslib.as_array(pointer, shape=(blocksize,))
        self.count = end


def decode_flac_int32(path: str | os.PathLike) -> tuple[np.ndarray, int, int]:
    """Decode a FLAC file with libFLAC 1.3.x.

    Returns (samples, sample_rate, bits_per_sample); samples are the raw int32
    values, shape [n] for mono and [n, channels] otherwise. Any decoder error
    raises FlacDecodeError naming the file; the STREAMINFO MD5 is not checked.
    """
    library = _load_library()
    path = os.fspath(path)
    sink = _SampleSink()

    def write(_decoder, frame, buffers, _client):
        if sink.errors:  # the file is already known to be bad: stop decoding
            return _WRITE_ABORT
        try:
            sink.on_frame(frame.contents, buffers)
        except BaseException as error:  # exceptions cannot cross the C boundary
            sink.failure = error
            return _WRITE_ABORT
        return _WRITE_CONTINUE

    def metadata(_decoder, block, _client):
        if block.contents.type == _METADATA_TYPE_STREAMINFO:
            try:
                sink.on_streaminfo(block.contents.stream_info)
            except BaseException as error:
                sink.failure = error

    def error(_decoder, status, _client):
        name = _ERROR_STATUS_NAMES[status] if 0 <= status < len(_ERROR_STATUS_NAMES) else str(status)
        sink.errors.append(f"{name} after {sink.count} samples")

    # Keep the ctypes callback objects alive for the whole decode.
    write_callback = _WriteCallback(write)
    metadata_callback = _MetadataCallback(metadata)
    error_callback = _ErrorCallback(error)

    decoder = library.FLAC__stream_decoder_new()
    if not decoder:
        raise MemoryError(f"{path}: FLAC__stream_decoder_new failed")
    try:
        library.FLAC__stream_decoder_set_md5_checking(decoder, 0)
        encoded_path = _encode_path(path)
        init_status = library.FLAC__stream_decoder_init_file(
            decoder, encoded_path, write_callback, metadata_callback, error_callback, None
        )
        if init_status != _INIT_STATUS_OK:
            name = _INIT_STATUS_NAMES[init_status] if init_status < len(_INIT_STATUS_NAMES) else init_status
            raise FlacDecodeError(path, f"libFLAC cannot open the file ({name})")
        library.FLAC__stream_decoder_process_until_end_of_stream(decoder)
        state = library.FLAC__stream_decoder_get_state(decoder)
        state_name = (library.FLAC__stream_decoder_get_resolved_state_string(decoder) or b"").decode()
        library.FLAC__stream_decoder_finish(decoder)
    finally:
        library.FLAC__stream_decoder_delete(decoder)

    if sink.failure is not None:
        raise FlacDecodeError(path, str(sink.failure)) from sink.failure
    if sink.errors:
        raise FlacDecodeError(path, f"libFLAC decoder error {sink.errors[0]} ({len(sink.errors)} in total)")
    if state != _STATE_END_OF_STREAM:
        raise FlacDecodeError(path, f"libFLAC stopped in state {state_name}")
    if sink.total_samples and sink.count != sink.total_samples:
        raise FlacDecodeError(
            path, f"decoded {sink.count} samples but STREAMINFO declares {sink.total_samples} (truncated file?)"
        )
    if sink.channels == 0:
        raise FlacDecodeError(path, "no STREAMINFO and no audio frames (truncated or not FLAC)")
    samples = sink.samples[: sink.count]
    if sink.channels == 1:
        samples = samples[:, 0]
    return np.ascontiguousarray(samples), sink.sample_rate, sink.bits_per_sample

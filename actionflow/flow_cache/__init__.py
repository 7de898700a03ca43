"""The compressed flow cache: one ``.afc`` file per video holding all its flow frames.

Why: one 340x256 ``.flo`` frame is 696 KB and the two-JPEGs-per-frame layout of two-stream
toolkits makes millions of tiny files. Here a video's flow is one file, ~90x smaller than
``.flo``, readable at any frame range without touching the rest.

- :mod:`~actionflow.flow_cache.codec`: 8-bit quantisation within ±bound (zero exact) and the
  image codec of a flow frame (JPEG, its tables stored once per file);
- :mod:`~actionflow.flow_cache.entry`: one file: :class:`CachedFlow` (reader, checksums),
  :class:`CacheWriter` (atomic writes), the byte layout and header checks;
- :mod:`~actionflow.flow_cache.lock`: per-video ``flock`` so processes never compute a video twice;
- :mod:`~actionflow.flow_cache.cache`: :class:`FlowCache`, a folder of entries for one engine,
  size and bound, and how an entry is matched to its video;
- :mod:`~actionflow.flow_cache.tsn`: TSN/denseflow flow JPEGs in and out (``cache import|export``);
- :mod:`~actionflow.flow_cache.cli`: ``python -m actionflow cache verify|stats|import|export``.
"""
from actionflow.flow_cache.cache import (
    DEFAULT_SIZE, IGNORED_CONFIG_KEYS, IMPORTED_ENGINE, FlowCache, cache_files, orphan_temp_files, video_identity,
)
from actionflow.flow_cache.cli import add_arguments, run, stats_dir, verify_dir
from actionflow.flow_cache.codec import (
    CODECS, DEFAULT_BOUND, DEFAULT_CODEC, LEVEL_SCHEMES, LEVELS, TSN, ZERO_EXACT, codec_arg, codec_name, decode_frame,
    dequantize, encode_frames, flo_bytes, parse_codec, positive_pixels, quantize, split_jpeg, stack_flows, tsn_levels,
)
from actionflow.flow_cache.entry import (
    FORMAT, FORMAT_VERSION, MAGIC, MAX_SIDE, SUFFIX, CacheCorrupt, CachedFlow, CacheError, CacheMismatch, CacheWriter,
    check_header,
)
from actionflow.flow_cache.lock import VideoLock, lock_is_held

__all__ = [
    "CODECS", "CacheCorrupt", "CacheError", "CacheMismatch", "CacheWriter", "CachedFlow", "DEFAULT_BOUND",
    "DEFAULT_CODEC", "DEFAULT_SIZE", "FORMAT", "FORMAT_VERSION", "FlowCache", "IGNORED_CONFIG_KEYS",
    "IMPORTED_ENGINE", "LEVELS", "LEVEL_SCHEMES", "MAGIC", "MAX_SIDE", "SUFFIX", "TSN", "VideoLock", "ZERO_EXACT",
    "add_arguments", "cache_files", "check_header", "codec_arg", "codec_name", "decode_frame", "dequantize",
    "encode_frames", "flo_bytes", "lock_is_held", "orphan_temp_files", "parse_codec", "positive_pixels", "quantize",
    "run", "split_jpeg", "stack_flows", "stats_dir", "tsn_levels", "verify_dir", "video_identity",
]

"""Compact JSON for the small headers on every frame: the C encoder and decoder, built once.

``json.dumps`` builds an encoder per call and ``json.loads`` runs a whitespace regex around the
document; on a tiny job's two headers per hop that was a tenth of a node's CPU. The output is the same
as ``json.dumps(obj, separators=(",", ":"))`` (ASCII only: lone surrogates survive).
"""

from __future__ import annotations

import json
from json import encoder as _encoder
from typing import Any

__all__ = ["dumps", "loads"]


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_c_encoder = getattr(_encoder, "c_make_encoder", None)
_fast = (_c_encoder(None, _refuse, _encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
         if _c_encoder is not None else None)
_SLOW = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False)
_DECODER = json.JSONDecoder()


def dumps(obj: Any) -> str:
    """``obj`` as compact ASCII JSON (dicts, lists, str, int, float, bool, None only)."""
    try:
        if _fast is not None and type(obj) is dict:
            return "".join(_fast(obj, 0))  # no circular check here: a cycle ends as RecursionError
        return _SLOW.encode(obj)
    except RecursionError:
        raise ValueError("a value nested too deeply, or containing itself, cannot be a frame header") from None


def loads(text: str) -> Any:
    """Like ``json.loads``; a compact document (what ``dumps`` makes) takes the short way."""
    try:
        obj, end = _DECODER.raw_decode(text)
        if end == len(text):
            return obj
    except ValueError:
        pass
    return json.loads(text)  # whitespace around it, or the error json would give
